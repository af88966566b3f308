"""The GPU path: gradients summed on the devices by NCCL through CuPy (``cupy.cuda.nccl``), MPI for the rest.

Design
------
* **One device per local rank.** :class:`~fastconv.distributed.mpi.MPICommunicator` splits the world
  with ``MPI_COMM_TYPE_SHARED`` into the ranks of each node; rank ``local_rank`` takes device
  ``local_rank`` (``cupy.cuda.Device(local_rank).use()``) before it allocates anything. NCCL refuses
  two ranks on one device, so more ranks than GPUs on a node is an error naming both counts (launch
  ``mpiexec -n <GPUs per node x nodes>``). ``CUDA_VISIBLE_DEVICES`` set per rank by a launcher wrapper
  also works: every rank then sees one device, device 0.
* **Bootstrap over MPI.** Rank 0 draws ``nccl.get_unique_id()``; MPI broadcasts it; every rank builds
  ``nccl.NcclCommunicator(size, uid, rank)``. MPI keeps the control plane: ranks, object broadcasts
  (optimizer state, resume metadata, the epoch seed), barriers, metric sums and ``Abort``.
* **Fused device buffer.** As on the host (:meth:`Communicator.average_gradients`): per dtype, one
  preallocated contiguous CuPy buffer holds every gradient times the rank's sample count plus the count
  itself in its last element; one ``ncclAllReduce`` (sum, in place) on the current stream; the buffer
  is divided by the summed count and the optimizer reads views of it. No host copy: the only
  synchronisation is reading back the summed count (a 4- or 8-byte copy that also orders the stream).
  Parameters and their broadcast use ``ncclBroadcast`` from rank 0 the same way.
* **Same numbers on every rank.** NCCL's ring sum delivers the same reduced bytes to every rank, and
  every rank runs the same deterministic update kernels on them, so replicas stay bit-identical (as on
  the CPU). The sum itself may differ in rounding from a one-GPU run (another summation order).
* **Not done here.** CUDA-aware MPI (the ``mpich`` wheel is not), overlap of the allreduce with the
  backward pass (bucketing by layer, as PyTorch DDP), and half-precision compression.

What runs without a GPU: everything but the two device primitives; the ``gpu``-marked tests in
``tests/test_distributed.py`` exercise a one-rank NCCL communicator on a device and skip elsewhere.
"""

from __future__ import annotations

from typing import Any

from fastconv._arrays import is_cupy
from fastconv.distributed.mpi import MPICommunicator

__all__ = ["NCCLCommunicator", "device_for_rank"]


def device_for_rank(local_rank: int, local_size: int, n_devices: int) -> int:
    """The device of the rank ``local_rank`` of ``local_size`` on a node with ``n_devices`` GPUs."""
    if n_devices < 1:
        raise ValueError("the NCCL communicator needs a CUDA device; this node has none (use backend='mpi')")
    if local_size > n_devices:
        raise ValueError(
            f"{local_size} ranks share this node but it has {n_devices} GPU(s): NCCL needs one GPU per rank; "
            f"launch at most {n_devices} rank(s) per node"
        )
    return local_rank


def _nccl_dtype(nccl: Any, dtype: Any) -> int:
    import numpy as np

    table = {
        np.dtype(np.float16): nccl.NCCL_FLOAT16,
        np.dtype(np.float32): nccl.NCCL_FLOAT32,
        np.dtype(np.float64): nccl.NCCL_FLOAT64,
    }
    try:
        return table[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"NCCL sums float16/32/64 buffers here, got {dtype}") from None


class NCCLCommunicator(MPICommunicator):  # pragma: no cover - needs GPUs (gpu-marked tests)
    """MPI for the control plane, NCCL for device buffers (see the module docstring). Host (NumPy)
    buffers, such as the metric sums, still go through MPI."""

    backend = "nccl"

    def __init__(self, comm: Any = None, device: int | None = None) -> None:
        super().__init__(comm)
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise ImportError(
                f"the NCCL communicator needs CuPy with NCCL: pip install cupy-cuda12x ({exc})"
            ) from exc
        self._cupy, self._nccl_mod = cupy, nccl
        n = cupy.cuda.runtime.getDeviceCount()
        self.device = device_for_rank(self.local_rank, self.local_size, n) if device is None else int(device)
        cupy.cuda.Device(self.device).use()
        uid = self.bcast_object(nccl.get_unique_id() if self.is_root else None)
        self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _stream(self) -> int:
        return self._cupy.cuda.get_current_stream().ptr

    def _sum_inplace(self, buf: Any) -> None:
        if not is_cupy(buf):
            super()._sum_inplace(buf)
            return
        self._nccl.allReduce(
            buf.data.ptr,
            buf.data.ptr,
            buf.size,
            _nccl_dtype(self._nccl_mod, buf.dtype),
            self._nccl_mod.NCCL_SUM,
            self._stream(),
        )

    def _bcast_inplace(self, buf: Any) -> None:
        if not is_cupy(buf):
            super()._bcast_inplace(buf)
            return
        self._nccl.bcast(buf.data.ptr, buf.size, _nccl_dtype(self._nccl_mod, buf.dtype), 0, self._stream())
