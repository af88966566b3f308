"""Data-parallel training over MPI (extra ``fastconv[mpi]``: mpi4py, and the ``mpich`` wheel on Linux).

The ChainerMN / Horovod model: every rank holds a replica of the model and the whole data set, takes
its slice of each global batch (:mod:`~fastconv.distributed._sharding`: the same order from (seed,
epoch) on every rank, nothing moved), computes the mean gradient over its slice, and a
:class:`DistributedOptimizer` averages the gradients over all samples of all ranks with one fused
allreduce per dtype before the same update on every rank, so the replicas stay bit-identical.

Launch::

    pip install 'fastconv[mpi]'
    mpiexec -n 4 fastconv train --epochs 5          # checkpoints, logs and plots from rank 0

and from Python, ``create_communicator()`` then ``fastconv.train.loop.train(..., communicator=comm)``
(``Sequential.fit(..., communicator=comm)``). With more than one rank the communicator installs an
exception hook that aborts the whole job when any rank fails, instead of leaving the others waiting.

Nothing here imports mpi4py until a communicator over MPI is created; ``import fastconv`` never does.
The GPU path (NCCL through CuPy) is designed in :mod:`fastconv.distributed.nccl`.
"""

from __future__ import annotations

from typing import Any

from fastconv.distributed._base import (
    LAUNCH,
    Communicator,
    SingleProcessCommunicator,
    launched_size,
    launched_under_mpi,
    require_mpi_launch,
)
from fastconv.distributed._batchnorm import batchnorm_layers, sync_batchnorm_stats
from fastconv.distributed._sharding import epoch_order, global_batches, shard, shard_bounds, steps_per_epoch

__all__ = [
    "BACKENDS",
    "LAUNCH",
    "Communicator",
    "DistributedOptimizer",
    "SingleProcessCommunicator",
    "batchnorm_layers",
    "create_communicator",
    "epoch_order",
    "global_batches",
    "launched_size",
    "launched_under_mpi",
    "require_mpi_launch",
    "shard",
    "shard_bounds",
    "steps_per_epoch",
    "sync_batchnorm_stats",
]

BACKENDS = ("auto", "mpi", "nccl", "single")


def create_communicator(
    backend: str = "mpi", *, comm: Any = None, abort_on_exception: bool = True
) -> Communicator:
    """A communicator.

    backend: ``"mpi"`` (mpi4py over ``comm``, ``MPI.COMM_WORLD`` by default), ``"nccl"`` (MPI plus NCCL
    for CuPy arrays, one GPU per local rank), ``"single"`` (one process, no MPI: every collective is the
    identity), or ``"auto"`` (``"mpi"`` when an MPI launcher started more than one process, else
    ``"single"``). With more than one rank and ``abort_on_exception`` (default), an uncaught exception on
    any rank prints its traceback and calls ``MPI.COMM_WORLD.Abort(1)``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        backend = "mpi" if (launched_size() or 1) > 1 or comm is not None else "single"
    if backend == "single":
        if comm is not None:
            raise ValueError("backend='single' takes no MPI comm")
        return SingleProcessCommunicator()
    if backend == "nccl":
        from fastconv.distributed.nccl import NCCLCommunicator

        communicator: Communicator = NCCLCommunicator(comm)
    else:
        from fastconv.distributed.mpi import MPICommunicator

        communicator = MPICommunicator(comm)
    if abort_on_exception and communicator.size > 1:
        from fastconv.distributed.mpi import install_abort_hook

        install_abort_hook()
    return communicator


def __getattr__(name: str) -> Any:
    # DistributedOptimizer needs fastconv.train.optimizers: loaded when asked for.
    if name == "DistributedOptimizer":
        from fastconv.distributed._optimizer import DistributedOptimizer

        return DistributedOptimizer
    raise AttributeError(f"module 'fastconv.distributed' has no attribute {name!r}")
