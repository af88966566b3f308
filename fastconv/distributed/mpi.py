"""The MPI communicator (mpi4py) and the hook that turns an uncaught exception on one rank into the end of
the whole job.

Gradients of host (NumPy) arrays are summed with one ``Allreduce(MPI.IN_PLACE, buffer)`` per dtype; CuPy
arrays are staged through host memory (one copy each way of the fused buffer), since the ``mpich``
wheel is not CUDA-aware; :mod:`fastconv.distributed.nccl` sums them on the devices instead.

Importing this module imports mpi4py, which initialises MPI: ``import fastconv`` never does.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

from fastconv._arrays import is_cupy
from fastconv.distributed._base import Communicator, launched_size

__all__ = ["MPICommunicator", "install_abort_hook", "import_mpi"]

_hook_installed = False


def import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "fastconv.distributed over MPI needs mpi4py and an MPI library: pip install 'fastconv[mpi]' "
            f"(mpi4py and, on Linux, the mpich wheel with its mpiexec); import failed: {exc}"
        ) from exc
    return MPI


def install_abort_hook() -> None:
    """Make an uncaught exception on any rank print its traceback and call ``MPI.COMM_WORLD.Abort(1)``,
    which ends every rank: without it the other ranks would wait forever in their next collective.
    Covers the main thread (``sys.excepthook``) and other threads (``threading.excepthook``); installed
    once per process."""
    global _hook_installed
    if _hook_installed:
        return
    MPI = import_mpi()
    world = MPI.COMM_WORLD

    def abort(exc_type: type[BaseException], exc: BaseException | None, tb: Any) -> None:
        try:
            sys.stderr.write(
                f"fastconv.distributed: uncaught {exc_type.__name__} on rank {world.Get_rank()} of "
                f"{world.Get_size()}; aborting every rank (MPI_Abort)\n"
            )
            traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            world.Abort(1)

    def thread_abort(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        abort(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = abort
    threading.excepthook = thread_abort
    _hook_installed = True


class MPICommunicator(Communicator):
    """A communicator over an MPI communicator (``MPI.COMM_WORLD`` by default); see :class:`Communicator`."""

    backend = "mpi"

    def __init__(self, comm: Any = None) -> None:
        super().__init__()
        MPI = import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        launched = launched_size()
        if comm is None and launched is not None and launched != self.size:
            # Each process would train alone and all would write the same files.
            raise ValueError(
                f"the launcher started {launched} processes but MPI_COMM_WORLD has {self.size}: mpi4py uses "
                f"another MPI library than this mpiexec ({MPI.Get_library_version().splitlines()[0].strip()}); "
                f"launch with the mpiexec of that library (pip install 'fastconv[mpi]' puts one next to "
                f"{sys.executable})"
            )
        # The ranks sharing this node's memory: a rank's GPU is its local rank (modulo the devices).
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        local.Free()

    def _sum_inplace(self, buf: Any) -> None:
        if is_cupy(buf):
            host = buf.get()  # not CUDA-aware: through host memory
            self.comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
            buf.set(host)
            return
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)

    def _bcast_inplace(self, buf: Any) -> None:
        if is_cupy(buf):
            host = buf.get()
            self.comm.Bcast(host, root=0)
            buf.set(host)
            return
        self.comm.Bcast(buf, root=0)

    def bcast_object(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def idle_barrier(self, poll: float = 0.01) -> None:
        """A barrier that sleeps between polls: ranks waiting for rank 0 (compiling kernels, loading
        data) leave the cores to it, where MPICH's blocking barrier would spin."""
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(poll)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._MPI.COMM_WORLD.Abort(code)

    def allreduce_max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        buf = np.array([value], dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        return float(buf[0])
