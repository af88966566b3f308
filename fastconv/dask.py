"""Batch inference and tiled convolution on Dask (``pip install 'fastconv[dask]'``: dask[array], distributed).

* :func:`predict` runs a model (``model.predict``) over a Dask array of images chunked along the batch axis:
  one task per chunk, the model shipped to each worker once (one graph key that every task depends on).
* :func:`conv2d` convolves a Dask array (N, C, H, W) chunked in H and W with ``dask.array.map_overlap``:
  each tile gets the halo its outputs read, so the result equals the in-memory :func:`fastconv.conv2d`.
* :func:`local_cluster` starts a ``distributed.LocalCluster`` on 127.0.0.1 whose workers run one thread
  each, with numba's and BLAS's thread counts set to match (no oversubscription).

Every entry point takes ``client=``: an existing ``distributed.Client``, a scheduler address
(``"tcp://host:8786"``), or None for the current Dask scheduler (a default client if one is active, else
``dask.config.set(scheduler=...)``: "threads", "synchronous", ...). Lazily returned arrays carry their model
and weights inside their own graph, so any scheduler can compute them.

Kernels run inside plain module-level functions of this module (``_predict_block``, ``_conv_tile``): Dask
pickles those by reference, so each worker imports fastconv and uses its numba on-disk cache. A numba
``@njit`` function handed to Dask directly would be pickled by value and compiled again on every worker.

dask and distributed are imported on first use, never by ``import fastconv``.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import sys
import threading
import uuid
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "RechunkWarning",
    "compute",
    "conv2d",
    "conv_halo",
    "get_client",
    "load_model",
    "local_cluster",
    "predict",
    "read_images",
]

INSTALL_HINT = "fastconv.dask needs dask and distributed: pip install 'fastconv[dask]'"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy")
# The thread-count variables a worker process gets (read when numba and BLAS load).
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class RechunkWarning(UserWarning):
    """An input was rechunked to what the computation needs (C in one chunk, tiles at least a halo wide)."""


def _dask_array() -> Any:
    try:
        import dask.array as da
    except ModuleNotFoundError as exc:  # pragma: no cover - the CI installs the extra
        raise ModuleNotFoundError(INSTALL_HINT) from exc
    return da


def _distributed() -> Any:
    try:
        import distributed
    except ModuleNotFoundError as exc:  # pragma: no cover - the CI installs the extra
        raise ModuleNotFoundError(INSTALL_HINT) from exc
    return distributed


# --------------------------------------------------------------------------------------------------
# Clients, clusters, worker threads
def get_client(client: Any, set_as_default: bool = False) -> tuple[Any, bool]:
    """``(client, owned)`` for ``client=``: None gives (None, False) (the current Dask scheduler); a
    ``distributed.Client`` itself; an address string a new Client connected to it (owned: the caller
    closes it when done; the default client from then on if ``set_as_default``)."""
    if client is None:
        return None, False
    if isinstance(client, str):
        distributed = _distributed()
        try:
            return distributed.Client(client, timeout="10s", set_as_default=set_as_default), True
        except OSError as exc:
            raise OSError(
                f"client: no Dask scheduler answered at {client!r} ({exc}); start one with `dask scheduler` "
                "and `dask worker ADDRESS`, or pass a running distributed.Client"
            ) from exc
    distributed = _distributed()
    if isinstance(client, distributed.Client):
        return client, False
    raise TypeError(
        f"client must be a distributed.Client, a scheduler address such as 'tcp://127.0.0.1:8786', or None "
        f"(the current Dask scheduler), got {type(client).__name__}"
    )


def _set_threads(threads: int) -> None:
    """Set this process's numba threads (fastconv's setting, read at each kernel call) and BLAS threads."""
    import fastconv

    fastconv.configure(threads=threads)


def _worker_threads() -> dict[str, Any]:
    """What a worker runs with: fastconv's thread setting, BLAS's threads and the thread variables.
    Module-level so that ``client.run`` pickles it by reference."""
    from threadpoolctl import threadpool_info

    import fastconv

    return {
        "fastconv": fastconv.get_config()["threads"],
        "blas": sorted({p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"}),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
    }


def _thread_limits_class() -> type:
    """Build :class:`ThreadLimits` (a subclass of distributed's WorkerPlugin, so it can only exist once
    distributed is imported); it is then found by name, as pickle needs."""
    WorkerPlugin = _distributed().WorkerPlugin

    class ThreadLimits(WorkerPlugin):  # type: ignore[misc, valid-type]
        """Worker plugin: sets the worker's numba and BLAS threads to ``threads`` when the worker starts
        (again after a restart), so ``n_workers * threads`` stays within the cores."""

        name = "fastconv-thread-limits"

        def __init__(self, threads: int = 1) -> None:
            self.threads = int(threads)

        def setup(self, worker: Any) -> None:
            _set_threads(self.threads)

    ThreadLimits.__module__ = __name__
    ThreadLimits.__qualname__ = "ThreadLimits"
    return ThreadLimits


def __getattr__(name: str) -> Any:
    if name == "ThreadLimits":
        cls = _thread_limits_class()
        globals()[name] = cls  # pickle checks that the name gives back the very same class
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` of ``n_workers`` processes on 127.0.0.1, no dashboard, each worker
    running ``threads_per_worker`` task threads with numba and BLAS set to that many threads too
    (``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` in the worker's
    environment before it starts, and :class:`ThreadLimits` applying ``fastconv.configure(threads=...)``).

    ``kwargs`` go to LocalCluster (e.g. ``dashboard_address=":8787"``, ``memory_limit``). Connect with
    ``distributed.Client(cluster)``; close the cluster (or use it as a context manager) when done.
    """
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kwargs.get("processes") is False:
        raise ValueError(
            "local_cluster runs worker processes (processes=True): threads of one process share numba's and "
            "BLAS's thread pools, so their thread counts could not be set per worker"
        )
    import dask

    distributed = _distributed()
    threads = str(int(threads_per_worker))
    env = {k: threads for k in THREAD_ENV}
    options: dict[str, Any] = {
        "n_workers": int(n_workers),
        "threads_per_worker": int(threads_per_worker),
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "env": env,
        "plugins": (__getattr__("ThreadLimits")(int(threads_per_worker)),),
    }
    options.update(kwargs)
    # BLAS reads its variables when NumPy loads, before the worker applies ``env``: distributed sets these
    # ones in the environment of the spawned process itself (its default for them is 1).
    pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    pre_spawn.update({k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
        return distributed.LocalCluster(**options)


def _distributed_client_of(arr: Any) -> Any:
    """The distributed Client that ``arr.compute()`` would run on under the current settings (a default
    client, unless ``dask.config.set(scheduler=...)`` names another scheduler), or None."""
    if "distributed" not in sys.modules:
        return None  # no client can exist without distributed imported
    from dask.base import get_scheduler

    owner = getattr(get_scheduler(collections=[arr]), "__self__", None)
    return owner if isinstance(owner, sys.modules["distributed"].Client) else None


def compute(arr: Any, client: Any = None, progress: bool = False) -> Any:
    """Compute a Dask collection on ``client`` (a Client, an address, or None for the current scheduler,
    as ``arr.compute()`` would pick it), with a progress bar when ``progress``: ``distributed.progress``
    on a client, ``dask.diagnostics.ProgressBar`` (to stderr) on the local schedulers."""
    c, owned = get_client(client)
    try:
        if c is None:
            c = _distributed_client_of(arr)
        if c is None:
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar(out=sys.stderr):
                    return arr.compute()
            return arr.compute()
        future = c.compute(arr)
        if progress:
            # this client's scheduler: progress would look for the default client, which may be another
            _distributed().progress(future, scheduler=c.scheduler.address)
            print(flush=True)  # progress leaves its bar without a newline
        return future.result()
    finally:
        if owned:
            c.close()


def _ship(obj: Any, what: str) -> Any:
    """``obj`` as one graph key (a Delayed): every task that takes it depends on that key, so a worker
    receives it once, whatever the number of tasks, and the graph stays computable by any scheduler."""
    import dask

    return dask.delayed(obj, name=f"fastconv-{what}-{uuid.uuid4().hex}", traverse=False)


# --------------------------------------------------------------------------------------------------
# predict
def _is_keras_model(model: Any) -> bool:
    from fastconv.train.keras.model import Sequential

    return isinstance(model, Sequential)


def _predict_local(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``model``'s outputs for the images ``x``, ``batch_size`` images per call, as a host array.

    A Keras-style Sequential batches itself (``predict(x, batch_size)``); other models (SimpleConvNet,
    SeparableConvNet, or anything with ``predict(x)``) take rows ``[i, i + batch_size)`` at a time, on the
    model's device when it names a backend."""
    from fastconv._arrays import to_host

    if _is_keras_model(model):
        return np.asarray(model.predict(x, batch_size=batch_size))
    backend = getattr(model, "backend", None)
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if backend is not None:
            import fastconv

            xb = fastconv.to_device(xb, backend)
        outs.append(to_host(model.predict(xb)))
    return np.concatenate(outs) if outs else np.zeros((0,))


_THREAD = threading.local()


def _thread_copy(model: Any) -> Any:
    """This thread's own copy of ``model``, made on its first block and reused for the next ones (a fresh
    copy per block would allocate every layer's buffers again): the layers keep their last activations, so
    two threads of one worker must not share a model. The copy goes when the model does."""
    copies = getattr(_THREAD, "models", None)
    if copies is None:
        copies = _THREAD.models = weakref.WeakKeyDictionary()
    try:
        mine = copies.get(model)
        if mine is None:
            mine = copies[model] = copy.deepcopy(model)
    except TypeError:  # a model that cannot be a weak key (unhashable, or no weak references)
        return copy.deepcopy(model)
    return mine


def _predict_block(block: np.ndarray, model: Any, batch_size: int, tail: tuple[int, ...], dtype: str) -> Any:
    """Predictions for one block of images (rows of the batch axis), on this thread's copy of the model."""
    if block.shape[0] == 0:
        return np.zeros((0, *tail), dtype=dtype)
    out = _predict_local(_thread_copy(model), np.asarray(block), batch_size)
    if tuple(out.shape[1:]) != tail:
        raise ValueError(
            f"the model returned outputs of shape {tuple(out.shape)} for a block of {block.shape[0]} images; "
            f"expected (n, {', '.join(map(str, tail))}) as for one image"
        )
    return out


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _batch_chunked(x: Any, rechunk: bool, chunk: int) -> Any:
    """x as a Dask array chunked along axis 0 only (rechunking the other axes to one chunk if allowed)."""
    da = _dask_array()
    if not isinstance(x, da.Array):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"x must be a dask.array.Array or a NumPy array, got {type(x).__name__}")
        x = da.from_array(np.asarray(x), chunks=(chunk, *x.shape[1:]))
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis and image axes (N, ...), got shape {x.shape}")
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError(f"x has unknown chunk sizes (shape {x.shape}); call x.compute_chunk_sizes() first")
    split = [i for i in range(1, x.ndim) if len(x.chunks[i]) > 1]
    if split:
        what = ", ".join(f"axis {i} in {len(x.chunks[i])} chunks" for i in split)
        if not rechunk:
            raise ValueError(
                f"x must be chunked along the batch axis (0) only, got {what} (chunks {x.chunks}); "
                f"rechunk it with x.rechunk({{{', '.join(f'{i}: -1' for i in split)}}}) or pass rechunk=True"
            )
        warnings.warn(
            f"predict: x was chunked in its image axes ({what}); rechunked to one chunk on each, as every "
            "task needs whole images",
            RechunkWarning,
            stacklevel=3,
        )
        x = x.rechunk({i: -1 for i in split})
    return x


def predict(
    model: Any,
    x: Any,
    *,
    batch_size: int = 256,
    client: Any = None,
    compute: bool = False,
    rechunk: bool = True,
    progress: bool = False,
) -> Any:
    """``model.predict`` over the images ``x``: a Dask array (N, ...) chunked along the batch axis (a NumPy
    array is chunked into blocks of ``batch_size`` images). One task per chunk, each calling the model on
    ``batch_size`` images at a time; the model is shipped to each worker once.

    Returns a Dask array (N, K) chunked as x along the batch axis, or its NumPy value when ``compute``
    (computed on ``client``: a distributed.Client, a scheduler address, or None for the current scheduler,
    with a progress bar when ``progress``). Chunks along the image axes are merged (a RechunkWarning), or
    refused with ``rechunk=False``.

    Equal to the in-memory ``model.predict`` bit for bit on the same batches (``batch_size`` images per
    call, from the start of each chunk) with the same thread count (numba's kernels split their work by
    thread count; a :func:`local_cluster` worker runs 1 thread). Other batch boundaries or thread counts
    change only the rounding, through the GEMMs' summation order (about 1e-6 of the largest output
    in float32).
    """
    if not hasattr(model, "predict"):
        raise TypeError(
            f"model must have a predict(x) method (a fastconv network), got {type(model).__name__}"
        )
    batch_size = _positive(batch_size, "batch_size")
    x = _batch_chunked(x, rechunk, batch_size)
    # One image through a copy of the model gives the output shape and dtype. That copy is what the
    # workers get: its layers now hold one image's activations, where the caller's model may hold a whole
    # batch's (inputs, im2col columns: megabytes to ship and to copy in every task). The caller's model is
    # left as it was.
    local = copy.deepcopy(model)
    probe = _predict_local(local, np.zeros((1, *x.shape[1:]), dtype=x.dtype), 1)
    tail, dtype = tuple(int(s) for s in probe.shape[1:]), probe.dtype
    import dask

    da = _dask_array()
    shipped = _ship(local, "model")
    block = dask.delayed(_predict_block, pure=True)
    parts = [
        da.from_delayed(block(b, shipped, batch_size, tail, dtype.str), shape=(n, *tail), dtype=dtype)
        for b, n in zip(x.to_delayed().ravel(), x.chunks[0])
    ]
    y = da.concatenate(parts, axis=0) if parts else da.zeros((0, *tail), dtype=dtype)
    return _maybe_compute(y, compute, client, progress)


def _maybe_compute(y: Any, do: bool, client: Any, progress: bool) -> Any:
    if do:
        return compute(y, client, progress)
    if client is not None:
        # Checked now. An address connects a Client that becomes the default, so that y.compute() runs
        # there; it stays open (distributed.default_client().close() closes it).
        get_client(client, set_as_default=True)
    return y


# --------------------------------------------------------------------------------------------------
# conv2d
class Halo(NamedTuple):
    """What one spatial axis of a tiled convolution needs: rows read before and after an output's anchor
    row, and the pads of the whole image."""

    before: int
    after: int
    pad_before: int
    pad_after: int


def conv_halo(kernel: Sequence[int], pad: Any = 0, dilation: Any = 1, stride: Any = 1) -> tuple[Halo, Halo]:
    """The halo of a convolution with ``kernel`` (kh, kw), along H and along W.

    Output ``o`` reads input rows ``[o*s - p0, o*s - p0 + dk)``, with ``dk = dilation*(k - 1) + 1`` and
    ``p0`` the top (left) pad. It is computed by the tile holding its anchor row ``o*s - p0 + c``, clamped
    into the image, where ``c = (dk - 1) // 2`` (the window's centre): a tile needs ``before = c`` rows of
    its upper neighbour and ``after = dk - 1 - c`` of its lower one, for any pad and stride. With stride 1
    and "same" padding the anchor of output o is row o, so the output chunks are the input's.
    """
    from fastconv._shapes import pad4, pair

    if len(kernel) != 2:
        raise ValueError(f"kernel must be (kh, kw), got {tuple(kernel)!r}")
    kh, kw = pair((int(kernel[0]), int(kernel[1])), "kernel", minimum=1)
    d = pair(dilation, "dilation", minimum=1)
    s = pair(stride, "stride", minimum=1)
    top, bottom, left, right = pad4(pad, "pad", kernel=(kh, kw), dilation=d, stride=s)
    halos = []
    for k, dd, p0, p1 in ((kh, d[0], top, bottom), (kw, d[1], left, right)):
        dk = dd * (k - 1) + 1
        c = (dk - 1) // 2
        halos.append(Halo(c, dk - 1 - c, p0, p1))
    return halos[0], halos[1]


class _Axis(NamedTuple):
    """One spatial axis of a tiled convolution, for :func:`_conv_tile` (plain tuples: small to pickle)."""

    size: int  # H (or W) of the whole image
    pad_before: int
    dk: int  # dilation*(k - 1) + 1
    stride: int
    before: int  # halo rows map_overlap adds before each tile but the first
    starts: tuple[int, ...]  # each tile's first row (in the whole image)
    out_starts: tuple[int, ...]  # each tile's first output row
    out_counts: tuple[int, ...]  # each tile's number of output rows


def _axis_plan(size: int, chunks: tuple[int, ...], halo: Halo, dk: int, stride: int, n_out: int) -> _Axis:
    """Which outputs each tile computes: those whose anchor row (see :func:`conv_halo`) lies in it."""
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(np.int64)
    anchor = np.clip(np.arange(n_out, dtype=np.int64) * stride - halo.pad_before + halo.before, 0, size - 1)
    tile = np.searchsorted(starts, anchor, side="right") - 1
    counts = np.bincount(tile, minlength=len(chunks))
    out_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _Axis(
        int(size),
        int(halo.pad_before),
        int(dk),
        int(stride),
        int(halo.before) if len(chunks) > 1 else 0,
        tuple(int(v) for v in starts),
        tuple(int(v) for v in out_starts),
        tuple(int(v) for v in counts),
    )


def _tile_rows(block_len: int, ax: _Axis, i: int) -> tuple[slice, int, int, int]:
    """(rows of the block to take, zeros before, zeros after, outputs) of tile ``i`` along one axis."""
    o0, n = ax.out_starts[i], ax.out_counts[i]
    lo = o0 * ax.stride - ax.pad_before  # the first input row the tile's outputs read (may be < 0)
    hi = (o0 + n - 1) * ax.stride - ax.pad_before + ax.dk  # one past the last
    first = ax.starts[i] - (ax.before if i > 0 else 0)  # the block's first row, in the whole image
    take_lo, take_hi = max(lo, 0), min(hi, ax.size)
    if not (first <= take_lo and take_hi - first <= block_len) and take_lo < take_hi:
        raise AssertionError(f"tile {i}: rows [{take_lo}, {take_hi}) are not in its block")  # a planning bug
    return slice(take_lo - first, take_hi - first), max(0, -lo), max(0, hi - ax.size), n


def _conv_tile(
    block: Any,
    W: Any,
    b: Any,
    *,
    block_id: tuple[int, ...],
    axes: tuple[int, int],
    plans: tuple[_Axis, _Axis],
    dilation: tuple[int, int],
    groups: int,
    layout: str,
    algorithm: str | None,
    backend: str | None,
    out_dtype: str,
) -> Any:
    """One output tile: the tile's rows and columns with their halo (zero pads where they leave the image),
    convolved with ``fastconv.conv2d`` at the layer's stride and dilation; output (r, c) of the tile is
    output (out_starts + r, out_starts + c) of the whole image."""
    import fastconv

    index: list[Any] = [slice(None)] * block.ndim
    pads = []
    n_out = []
    for ax, plan in zip(axes, plans):
        rows, p0, p1, n = _tile_rows(block.shape[ax], plan, block_id[ax])
        index[ax] = rows
        pads.append((p0, p1))
        n_out.append(n)
    shape = list(block.shape)
    shape[3 if layout == "NHWC" else 1] = W.shape[0]
    shape[axes[0]], shape[axes[1]] = n_out
    if 0 in n_out:
        return np.zeros(shape, dtype=out_dtype)
    xs = block[tuple(index)]
    if xs.shape[axes[0]] == 0 or xs.shape[axes[1]] == 0:
        # Every output of the tile reads padding only (a pad wider than the kernel): pad explicitly, as
        # conv2d needs at least one row and column of image.
        width = [(0, 0)] * block.ndim
        width[axes[0]], width[axes[1]] = pads
        xs, pads = np.pad(xs, width), [(0, 0), (0, 0)]
    y = fastconv.conv2d(
        xs,
        W,
        b,
        stride=(plans[0].stride, plans[1].stride),
        pad=(pads[0], pads[1]),
        dilation=dilation,
        groups=groups,
        layout=layout,
        algorithm=algorithm,
        backend=backend,
    )
    if list(y.shape) != shape:
        raise AssertionError(f"tile {block_id}: conv2d gave {tuple(y.shape)}, planned {tuple(shape)}")
    return y


def _host_array(a: Any, name: str) -> Any:
    """W or b as an array (a Dask array is computed: the weights go to every tile)."""
    da = _dask_array()
    if isinstance(a, da.Array):
        return a.compute()
    return a


def _check_bias(b: Any, n_filters: int) -> None:
    if b is None or (isinstance(b, numbers.Real) and not isinstance(b, bool)):
        return
    from fastconv.functional import _check_array

    _check_array("b", b)
    if tuple(b.shape) not in ((n_filters,), ()):
        raise ValueError(
            f"b must have shape ({n_filters},) (one bias per filter of W) or be a scalar, got shape {tuple(b.shape)}"
        )


def conv2d(
    x: Any,
    W: Any,
    b: Any = None,
    stride: Any = 1,
    pad: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    algorithm: str | None = None,
    backend: str | None = None,
    client: Any = None,
    compute: bool = False,
    rechunk: bool = True,
    progress: bool = False,
) -> Any:
    """:func:`fastconv.conv2d` of a Dask array x (N, C, H, W) (or (N, H, W, C) with ``layout="NHWC"``)
    chunked in N, H and W, tile by tile with ``dask.array.map_overlap``; the arguments are fastconv.conv2d's
    (``pad``: int, pair, ((top, bottom), (left, right)), "valid" or "same"; any stride and dilation).

    Each tile computes the outputs whose anchor row and column it holds (:func:`conv_halo`), reading a halo
    of ``(dk - 1) // 2`` rows before and ``dk - 1 - (dk - 1) // 2`` after (``dk = dilation*(k - 1) + 1``),
    the pads applied at the image's border only. With stride 1 and "same" padding the output chunks are
    the input's; otherwise each tile's output is what its outputs are (no output is computed twice, no
    strided output is computed and thrown away).

    Chunks along C are merged into one, and tiles narrower than the halo merged with their neighbours
    (each with a RechunkWarning); ``rechunk=False`` refuses both with a ValueError instead.

    Result: every output reads the same inputs and weights as in ``fastconv.conv2d`` of the whole array.
    With ``algorithm="direct"`` (a fixed per-pixel loop) it is equal bit for bit. "gemm" sums in an order
    BLAS may change with the matrix sizes, so tiles agree with the whole image within a direct sum's
    rounding (max|dy| <= 1e-5 * max|y| in float32, 1e-13 in float64); with "auto" a tile may also take
    another algorithm than the whole image (Winograd: 2e-5 in float32; README, "Convolution algorithms").

    Returns a Dask array, or its value when ``compute`` (on ``client``: a distributed.Client, an address,
    or None for the current scheduler; a progress bar when ``progress``).
    """
    da = _dask_array()
    if not isinstance(x, da.Array):
        raise TypeError(
            f"x must be a dask.array.Array, got {type(x).__module__}.{type(x).__name__}; wrap it with "
            "dask.array.from_array(x, chunks=(1, C, 1024, 1024)), or call fastconv.conv2d for an in-memory array"
        )
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError(f"x has unknown chunk sizes (shape {x.shape}); call x.compute_chunk_sizes() first")
    from fastconv.functional import _conv_args, _result_dtype

    W = _host_array(W, "W")
    b = _host_array(b, "b")
    s, p, d, g, lay, out_hw = _conv_args(x, W, stride, pad, dilation, groups, layout)
    _check_bias(b, W.shape[0])
    if algorithm is not None:
        from fastconv._algorithms import check_name

        check_name(algorithm)
    out_dtype, _ = _result_dtype(x, W)
    h_ax, w_ax, c_ax = (1, 2, 3) if lay == "NHWC" else (2, 3, 1)

    if len(x.chunks[c_ax]) > 1:
        if not rechunk:
            raise ValueError(
                f"x is chunked along its channel axis ({c_ax}: chunks {x.chunks[c_ax]}); every output sums "
                f"over all channels, so they must be in one chunk: x.rechunk({{{c_ax}: -1}}), or rechunk=True"
            )
        warnings.warn(
            f"conv2d: x was chunked along its channel axis ({x.chunks[c_ax]}); rechunked into one chunk, as "
            "every output sums over all channels",
            RechunkWarning,
            stacklevel=2,
        )
        x = x.rechunk({c_ax: -1})

    halos = conv_halo(W.shape[2:], _pad_pairs(p), d, s)
    from dask.array.overlap import ensure_minimum_chunksize

    merge = {}
    for ax, halo in zip((h_ax, w_ax), halos):
        need = max(halo.before, halo.after)
        chunks = x.chunks[ax]
        if len(chunks) > 1 and min(chunks) < need:
            if not rechunk:
                raise ValueError(
                    f"x's tiles along axis {ax} (chunks {chunks}) include some narrower than the halo of "
                    f"{need} rows this kernel reads from each neighbour (kernel {tuple(W.shape[2:])}, dilation "
                    f"{d}); make every chunk at least {need} wide, or pass rechunk=True"
                )
            merge[ax] = ensure_minimum_chunksize(need, chunks)
    if merge:
        warnings.warn(
            "conv2d: tiles narrower than the halo merged with their neighbours: "
            + ", ".join(f"axis {ax} {x.chunks[ax]} -> {c}" for ax, c in merge.items()),
            RechunkWarning,
            stacklevel=2,
        )
        x = x.rechunk(merge)

    plans = []
    depth: dict[int, Any] = {i: 0 for i in range(4)}
    for ax, halo, k, dd, ss, n_out in zip((h_ax, w_ax), halos, W.shape[2:], d, s, out_hw):
        dk = dd * (int(k) - 1) + 1
        plans.append(_axis_plan(int(x.shape[ax]), x.chunks[ax], halo, dk, ss, n_out))
        if len(x.chunks[ax]) > 1 and (halo.before or halo.after):
            depth[ax] = (halo.before, halo.after)
    out_chunks = list(x.chunks)
    out_chunks[c_ax] = (int(W.shape[0]),)
    out_chunks[h_ax], out_chunks[w_ax] = plans[0].out_counts, plans[1].out_counts

    y = da.map_overlap(
        _conv_tile,
        x,
        depth=depth,
        boundary="none",
        trim=False,
        allow_rechunk=False,
        chunks=tuple(out_chunks),
        dtype=out_dtype,
        meta=np.empty((0, 0, 0, 0), dtype=out_dtype),
        W=_ship(W, "weights"),
        b=_ship(b, "bias") if hasattr(b, "shape") else b,
        axes=(h_ax, w_ax),
        plans=tuple(plans),
        dilation=d,
        groups=g,
        layout=lay,
        algorithm=algorithm,
        backend=backend,
        out_dtype=out_dtype.str,
        name=f"fastconv-conv2d-{uuid.uuid4().hex}",
    )
    return _maybe_compute(y, compute, client, progress)


def _pad_pairs(p: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(top, bottom, left, right) as ((top, bottom), (left, right))."""
    return ((p[0], p[1]), (p[2], p[3]))


# --------------------------------------------------------------------------------------------------
# Models and images on disk (``fastconv predict``)
DATASET_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
MODEL_KINDS = ("simple", "keras", "separable")


def load_model(
    path: str | os.PathLike[str],
    kind: str | None = None,
    input_shape: Sequence[int] | None = None,
    backend: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The network a ``fastconv train --out DIR`` run wrote: ``(model, info)``.

    ``path``: the run's directory (its ``checkpoint.npz``), a checkpoint file, or a parameter file
    (``model.npz``, ``save_params``), which names no model: pass ``kind`` ("simple", "keras",
    "separable") and ``input_shape`` (C, H, W) then. ``info``: kind, input_shape (C, H, W), dtype,
    dataset (None for a parameter file), and whether the outputs are probabilities (the Keras-style model
    ends in a softmax) or logits.
    """
    from fastconv.train import trainer
    from fastconv.train._io import check_arrays, load_npz

    path = Path(path)
    if path.is_dir():
        ckpt = path / trainer.CHECKPOINT
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"model: {path} holds no {trainer.CHECKPOINT} (the directory `fastconv train --out DIR` writes)"
            )
        path = ckpt
    if not path.is_file():
        raise FileNotFoundError(f"model: no such file or directory: {path}")
    arrays = load_npz(path, "model file")
    dataset = None
    if "meta" in arrays:
        meta, params, _ = trainer.load_checkpoint(path)
        config = meta["config"]
        if kind is not None and kind != config.get("model"):
            raise ValueError(f"model: {path} holds a {config.get('model')!r} model, not {kind!r}")
        kind, dataset = config.get("model"), config.get("dataset")
        dtype = np.dtype(config.get("dtype", "float32"))
        if meta["version"] < 2 and kind == "keras":
            raise ValueError(
                f"model: {path} was written by fastconv before 0.2, whose Keras-style model flattened in "
                "another order; train it again"
            )
        trained = DATASET_SHAPES.get(dataset)
        if input_shape is not None and trained is not None and tuple(input_shape) != trained:
            raise ValueError(
                f"the model in {path} was trained on {dataset} images of shape (C, H, W) = {trained}; "
                f"the input's images are {tuple(input_shape)}"
            )
        input_shape = input_shape if input_shape is not None else trained
    else:
        from fastconv.train.keras.model import WEIGHTS_FORMAT

        params = {k: v for k, v in arrays.items() if k != WEIGHTS_FORMAT}
        if kind is None:
            raise ValueError(
                f"model: {path} holds parameters only (no checkpoint meta): name the network, "
                f"--model {'|'.join(MODEL_KINDS)} (model kind=...)"
            )
        if kind == "keras" and WEIGHTS_FORMAT not in arrays:
            raise ValueError(
                f"model: {path} has no {WEIGHTS_FORMAT} entry: not Keras-style weights of fastconv 0.2+"
            )
        dtype = np.result_type(*params.values()) if params else np.dtype(np.float32)
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {', '.join(map(repr, MODEL_KINDS))}, got {kind!r}")
    if input_shape is None:
        raise ValueError(f"model: the input shape (C, H, W) of {path} is unknown; pass input_shape")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    input_shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    model = trainer.build_model(kind, input_shape, np.random.default_rng(0), dtype, backend)
    if hasattr(model, "build"):
        model.build()
    check_arrays(path, params, {k: tuple(v.shape) for k, v in model.params.items()}, "model file")
    model.set_params(params)
    info = {
        "kind": kind,
        "input_shape": input_shape,
        "dtype": np.dtype(dtype).name,
        "dataset": dataset,
        "outputs": "probabilities" if kind == "keras" else "logits",
        "path": str(path),
    }
    return model, info


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def _read_npy_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an .npy file (memory-mapped: only those rows are read)."""
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def _read_image(path: str, mode: str | None) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"reading {path} needs Pillow: pip install pillow") from exc
    with Image.open(path) as im:
        return np.asarray(im.convert(mode) if mode else im)


def _read_files(paths: tuple[str, ...], mode: str | None, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """One block of a folder of images: the files read and stacked (every image must have ``shape``)."""
    out = np.empty((len(paths), *shape), dtype=dtype)
    for i, p in enumerate(paths):
        a = _read_image(p, mode)
        if a.shape != shape:
            raise ValueError(f"{p}: image of shape {a.shape}, the folder's first image is {shape}")
        out[i] = a
    return out


def read_images(
    path: str | os.PathLike[str], chunk: int = 256, *, mode: str | None = None, component: str | None = None
) -> tuple[Any, list[str] | None]:
    """Images on disk as a Dask array (N, ...) chunked by ``chunk`` images, and their file names (a folder)
    or None (a stack). Nothing is read but the shapes: the tasks read their own rows.

    ``path``: an ``.npy`` file (N, ...); a Zarr array (``component``: the array inside a Zarr group); or a
    folder of images, one per file (.png, .jpg, ... through Pillow, converted to ``mode`` such as "L",
    or .npy), sorted by name, all of one shape. The workers must be able to read ``path``.
    """
    da = _dask_array()
    chunk = _positive(chunk, "chunk")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input: no such file or directory: {path}")
    if path.is_dir() and _is_zarr(path):
        try:
            arr = da.from_zarr(str(path), component=component)
        except Exception as exc:  # zarr's errors vary by version: name the path and the fix
            raise ValueError(
                f"input: cannot open {path} as a Zarr array ({type(exc).__name__}: {exc}); for a group, "
                "name the array with --component"
            ) from exc
        return arr.rechunk({0: chunk, **{i: -1 for i in range(1, arr.ndim)}}), None
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"input: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        first = _read_image(files[0], mode)
        import dask

        read = dask.delayed(_read_files, pure=True)
        parts = [
            da.from_delayed(
                read(tuple(files[i : i + chunk]), mode, first.shape, first.dtype.str),
                shape=(len(files[i : i + chunk]), *first.shape),
                dtype=first.dtype,
            )
            for i in range(0, len(files), chunk)
        ]
        return da.concatenate(parts, axis=0), [Path(f).name for f in files]
    if path.suffix == ".npy":
        try:
            head = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise ValueError(f"input: {path} is not a readable .npy array ({exc})") from exc
        if head.ndim < 1:
            raise ValueError(f"input: {path} holds a scalar, not a stack of images")
        import dask

        read = dask.delayed(_read_npy_rows, pure=True)
        n = head.shape[0]
        parts = [
            da.from_delayed(
                read(str(path), i, min(i + chunk, n)),
                shape=(min(i + chunk, n) - i, *head.shape[1:]),
                dtype=head.dtype,
            )
            for i in range(0, n, chunk)
        ]
        arr = da.concatenate(parts, axis=0) if parts else da.from_array(np.asarray(head))
        return arr, None
    raise ValueError(
        f"input: {path} is neither an .npy file, a Zarr array nor a folder of images ({', '.join(IMAGE_SUFFIXES)})"
    )
