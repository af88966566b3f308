"""asv: time and peak memory of one training step (forward, backward, optimizer update) of each network.

T1 is the book's SimpleConvNet (batch 100, Adam), T2 the Keras-style MNIST network (batch 64,
RMSprop); see :mod:`fastconv.bench.cases`. Skipped when a backend is unavailable or the
training stack (``fastconv.train``) is not importable.
"""

from __future__ import annotations

from typing import Any

from ._common import BACKENDS, DTYPES, require_backend, sync
from .shapes import BY_NAME, TRAIN_CASES, build_train_step


class TrainStep:
    """One step of ``net.loss_and_gradient`` + ``optimizer.update`` on a fixed batch."""

    params = (BACKENDS, DTYPES, [c.name for c in TRAIN_CASES])
    param_names = ["backend", "dtype", "network"]
    number = 1
    repeat = (1, 5, 4.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, backend: str, dtype: str, network: str) -> None:
        require_backend(backend)
        try:
            self.step: Any = build_train_step(BY_NAME[network], backend, dtype)
        except ImportError as exc:  # the training stack is not there (older commit)
            raise NotImplementedError(f"training stack unavailable: {exc}") from exc
        self.step()  # compile, allocate optimizer state
        sync(backend)

    def time_step(self, backend: str, dtype: str, network: str) -> None:
        self.step()
        sync(backend)

    def peakmem_step(self, backend: str, dtype: str, network: str) -> None:
        self.step()
        sync(backend)
