"""What every communicator shares: the fused-buffer gradient average, the broadcasts of parameters and
optimizer state, the metric sums; the single-process communicator; and how an MPI launch is detected.

A subclass supplies five primitives (``_sum_inplace``, ``_bcast_inplace``, ``bcast_object``,
``allgather_object``, ``barrier``) and ``abort``; everything else is written once, here, so the
single-process path and the MPI path run the same code.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv._arrays import array_module, to_host

__all__ = [
    "LAUNCH",
    "Communicator",
    "SingleProcessCommunicator",
    "launched_size",
    "launched_under_mpi",
    "require_mpi_launch",
]

# The environment each MPI launcher gives its processes: the world size (MPICH's and Intel MPI's Hydra,
# and Slurm's PMI/PMI2 set PMI_SIZE; Open MPI OMPI_COMM_WORLD_SIZE; MVAPICH MV2_COMM_WORLD_SIZE) and
# the rank (PMIx launchers set PMIX_RANK but no size).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")

LAUNCH = "mpiexec -n 4 fastconv train"
"""How a distributed training run is started (``pip install 'fastconv[mpi]'`` provides ``mpiexec``)."""


def launched_size() -> int | None:
    """The number of processes the MPI launcher started, from its environment (no MPI call), or None
    when this process was not started by ``mpiexec`` / ``srun`` (or its size is not in the environment)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def launched_under_mpi() -> bool:
    """True when an MPI launcher started this process (its size or rank is in the environment)."""
    return launched_size() is not None or any(os.environ.get(v, "").strip().isdigit() for v in _RANK_VARS)


def require_mpi_launch(option: str, command: str = LAUNCH) -> None:
    """Raise a ValueError saying how to launch when ``option`` (a distributed option) is used in a process
    that no MPI launcher started."""
    if not launched_under_mpi():
        raise ValueError(
            f"{option} needs an MPI launch: run it as `{command} {option} ...` "
            "(pip install 'fastconv[mpi]' provides mpi4py and mpiexec); "
            "a plain `fastconv train` trains in one process"
        )


@dataclass
class _Group:
    """The parameters of one dtype and array module packed into one contiguous buffer: entries are
    (key, shape, offset, size); the buffer has one more element at the end for the weight."""

    xp: Any
    dtype: np.dtype
    entries: list[tuple[str, tuple[int, ...], int, int]] = field(default_factory=list)
    total: int = 0
    buffer: Any = None


class Communicator:
    """Ranks, collectives and the fused gradient average (see :func:`fastconv.distributed.create_communicator`).

    ``rank``/``size`` in the world; ``local_rank``/``local_size`` among the ranks of this node (the
    GPU a rank takes). ``stats`` accumulates the seconds spent averaging gradients (``average_seconds``:
    packing, the allreduce and unpacking; ``reduce_seconds``: the allreduce alone), the ``steps`` and
    the ``bytes`` reduced; :meth:`reset_stats` zeroes them.
    """

    backend = "base"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def __init__(self) -> None:
        self._layouts: dict[tuple[Any, ...], list[_Group]] = {}
        self.reset_stats()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that writes files and prints."""
        return self.rank == 0

    def reset_stats(self) -> None:
        self.stats: dict[str, float] = {"average_seconds": 0.0, "reduce_seconds": 0.0, "steps": 0, "bytes": 0}

    # -- primitives (subclasses) -------------------------------------------------------------------
    def _sum_inplace(self, buf: Any) -> None:
        """Replace ``buf`` (a contiguous 1-D array) by its elementwise sum over the ranks."""
        raise NotImplementedError

    def _bcast_inplace(self, buf: Any) -> None:
        """Replace ``buf`` by rank 0's."""
        raise NotImplementedError

    def bcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (pickled) on every rank."""
        raise NotImplementedError

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait for every rank."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now, with exit status ``code``."""
        raise NotImplementedError

    def idle_barrier(self) -> None:
        """A barrier for long waits (rank 0 compiling kernels or downloading data): the MPI one sleeps
        between polls instead of spinning on a core the busy rank needs."""
        self.barrier()

    # -- built on the primitives --------------------------------------------------------------------
    def _layout(self, params: Mapping[str, Any]) -> list[_Group]:
        """The fused buffers for ``params``: one per (array module, dtype), in the order of ``params``,
        allocated once per parameter layout and reused for every step."""
        sig = tuple((k, tuple(p.shape), str(p.dtype), array_module(p).__name__) for k, p in params.items())
        groups = self._layouts.get(sig)
        if groups is None:
            by_kind: dict[tuple[str, str], _Group] = {}
            for key, p in params.items():
                xp = array_module(p)
                group = by_kind.setdefault((xp.__name__, str(p.dtype)), _Group(xp, np.dtype(p.dtype)))
                n = math.prod(p.shape)
                group.entries.append((key, tuple(p.shape), group.total, n))
                group.total += n
            groups = list(by_kind.values())
            for group in groups:
                group.buffer = group.xp.zeros(group.total + 1, dtype=group.dtype)
            self._layouts[sig] = groups
        return groups

    def average_gradients(
        self, params: Mapping[str, Any], grads: Mapping[str, Any] | None, weight: float = 1.0
    ) -> dict[str, Any]:
        """The weighted mean over the ranks of each gradient: ``sum_r weight_r * grads_r / sum_r weight_r``.

        ``weight``: this rank's number of samples (its gradients are means over them), so the result is
        the mean gradient over every sample of the global batch; 1 on every rank gives the plain mean.
        A rank with no samples passes ``grads=None`` (or weight 0) and still joins the collective.
        One allreduce per dtype: every gradient, times its weight, is packed into one preallocated
        contiguous buffer whose last element holds the weight, summed in place, then divided by the
        summed weight. The result holds views of that buffer, valid until the next call (an optimizer
        reads them at once). With one rank the gradients are returned as they are.
        """
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0 (this rank's samples), got {weight!r}")
        if grads is not None:
            missing = [k for k in params if k not in grads]
            if missing:
                raise KeyError(f"grads has no entry for parameter(s) {missing}; got keys {sorted(grads)}")
            for k, p in params.items():
                if tuple(grads[k].shape) != tuple(p.shape):
                    raise ValueError(
                        f"grads[{k!r}] has shape {tuple(grads[k].shape)}, params[{k!r}] has {tuple(p.shape)}"
                    )
        if self.size == 1:
            if grads is None or weight == 0:
                raise ValueError("a batch with no samples: nothing to average")
            return dict(grads)
        start = time.perf_counter()
        out: dict[str, Any] = {}
        for group in self._layout(params):
            buf = group.buffer
            if grads is None or weight == 0:
                buf.fill(0)
            else:
                for key, _, off, n in group.entries:
                    g = grads[key]
                    g = g.reshape(-1) if array_module(g) is group.xp else group.xp.asarray(g).reshape(-1)
                    group.xp.multiply(g, weight, out=buf[off : off + n])
                buf[-1] = weight
            t0 = time.perf_counter()
            self._sum_inplace(buf)
            self.stats["reduce_seconds"] += time.perf_counter() - t0
            total = float(buf[-1])
            if not total > 0:
                raise RuntimeError("no rank had a sample in this batch: every weight was 0")
            body = buf[:-1]
            body /= total
            for key, shape, off, n in group.entries:
                out[key] = body[off : off + n].reshape(shape)
            self.stats["bytes"] += buf.nbytes
        self.stats["average_seconds"] += time.perf_counter() - start
        self.stats["steps"] += 1
        return out

    def average_arrays(self, arrays: Sequence[Any]) -> None:
        """Replace each array (same shapes and dtypes on every rank) by its mean over the ranks, in place
        (BatchNorm running statistics)."""
        if self.size == 1 or not arrays:
            return
        named = {str(i): a for i, a in enumerate(arrays)}
        saved = dict(self.stats)  # not a gradient step: keep the step statistics as they were
        averaged = self.average_gradients(named, named, 1.0)
        self.stats = saved
        for i, a in enumerate(arrays):
            a[...] = averaged[str(i)]

    def allreduce_sum(self, values: Sequence[float]) -> np.ndarray:
        """The elementwise sum over the ranks of a few numbers (metrics), as float64 on every rank."""
        buf = np.array(values, dtype=np.float64).reshape(-1)
        if self.size > 1:
            self._sum_inplace(buf)
        return buf

    def bcast_params(self, params: Mapping[str, Any]) -> None:
        """Copy rank 0's parameters into every rank's arrays, in place (one broadcast per dtype). Raises
        ValueError on a rank whose parameters are not named, shaped and typed as rank 0's."""
        if self.size == 1:
            return
        sig = [(k, tuple(p.shape), str(p.dtype)) for k, p in params.items()]
        root_sig = self.bcast_object(sig)
        # Every rank learns whether any differs, so all of them stop, none waiting in the broadcast below.
        bad = [q for q, same in enumerate(self.allgather_object(sig == root_sig)) if not same]
        if bad:
            diff = sorted(set(map(str, sig)) ^ set(map(str, root_sig)))[:4]
            detail = f"; this rank's differences: {', '.join(diff)}" if diff else ""
            raise ValueError(
                f"the model's parameters on rank(s) {bad} differ from rank 0's in names, shapes or dtypes "
                f"(build the same model on every rank){detail}"
            )
        for group in self._layout(params):
            buf = group.buffer
            if self.is_root:
                for key, _, off, n in group.entries:
                    buf[off : off + n] = params[key].reshape(-1)
            self._bcast_inplace(buf)
            if not self.is_root:
                for key, shape, off, n in group.entries:
                    params[key][...] = buf[off : off + n].reshape(shape)

    def bcast_optimizer(self, optimizer: Any, params: Mapping[str, Any]) -> None:
        """Load rank 0's optimizer state (step count, hyper-parameters, slots) on every rank."""
        if self.size == 1:
            return
        state = self.bcast_object(optimizer.state_dict() if self.is_root else None)
        if not self.is_root:
            optimizer.load_state_dict(state, params)

    def gather_rows(self, rows: Any) -> np.ndarray:
        """Every rank's host array concatenated along axis 0 in rank order, on every rank."""
        host = to_host(rows)
        if self.size == 1:
            return np.asarray(host)
        return np.concatenate(self.allgather_object(np.asarray(host)))


class SingleProcessCommunicator(Communicator):
    """One rank, no MPI: every collective is the identity, so the training code has one path."""

    backend = "single"

    def _sum_inplace(self, buf: Any) -> None:
        pass

    def _bcast_inplace(self, buf: Any) -> None:
        pass

    def bcast_object(self, obj: Any) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        os._exit(code)  # what Abort does to a one-process job: no cleanup, no hang
