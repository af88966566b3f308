"""A data-parallel optimizer: average the gradients over the ranks, then let any fastconv optimizer step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastconv.train.optimizers import Optimizer

__all__ = ["DistributedOptimizer"]


class DistributedOptimizer(Optimizer):
    """Wraps ``optimizer``: :meth:`update` first averages the gradients over the ranks of ``communicator``
    (one fused allreduce per dtype, each rank weighted by its samples), then runs the wrapped optimizer's
    update. Every rank applies the same update to the same parameters from the same reduced buffer, so
    replicas stay bit-identical.

    ``scale_lr``: multiply the learning rate by the number of ranks (the linear scaling rule, Goyal et
    al. 2017) for users who also grow the global batch with the ranks; off by default, since here the
    global batch is what the user sets whatever the number of ranks.

    State, hyper-parameters and ``state_dict``/``load_state_dict`` are the wrapped optimizer's, so
    checkpoints are the same as a one-process run's.
    """

    def __init__(self, optimizer: Optimizer, communicator: Any, *, scale_lr: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a fastconv optimizer (SGD, Adam, ...), got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("optimizer is already a DistributedOptimizer")
        # No Optimizer.__init__: every attribute below forwards to the wrapped optimizer.
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "communicator", communicator)
        if scale_lr:
            optimizer.lr *= communicator.size

    # Reads and writes of the wrapped optimizer's attributes (lr, iter, state, hyper-parameters) go to it.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.optimizer, name, value)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.optimizer.name

    @property
    def _hyper(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.optimizer._hyper

    @property
    def _slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.optimizer._slots

    def __repr__(self) -> str:
        return f"DistributedOptimizer({self.optimizer!r}, {self.communicator.size} ranks)"

    def update(self, params: dict[str, Any], grads: Mapping[str, Any] | None, weight: float = 1.0) -> None:
        """Average ``grads`` over the ranks (this rank's weighted by ``weight``, its sample count; None
        or weight 0 for a rank without samples in this batch), then update ``params`` in place."""
        reduced = self.communicator.average_gradients(params, grads, weight)
        self.optimizer.update(params, reduced)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        self.optimizer.load_state_dict(state, params)
