"""The numba backend: parallel CPU kernels compiled by numba, GEMMs through NumPy's BLAS.

Importing this module does not import numba: :func:`probe` only looks the package up, and the
kernels (:mod:`fastconv.backends._numba_kernels`) are imported, and compiled or loaded from
numba's on-disk cache, on the first call that needs them. :func:`warmup` compiles all of them
for float32 and float64 ahead of time.

How each operation runs (see :mod:`fastconv.backends` for the contract):

* convolution: im2col + GEMM, images in chunks of about ``CHUNK_BYTES`` of columns (so they
  stay in L3 between im2col and the GEMM). Per-image column layout ``col[n]: (C*kh*kw, OH*OW)``,
  so ``W2d @ col[n]`` is already image ``n`` of the NCHW output (no transpose); for small images
  (``OH*OW < WIDE_MAX_P``, e.g. 11x11) one wide GEMM ``(C*kh*kw, B*OH*OW)`` per chunk instead,
  plus one transpose of the result. The bias rides in the GEMM as a row of ones under the
  columns (no extra pass), and the same row gives db inside the dW GEMM. dx is
  ``col2im(W2d.T @ dout)`` with a per-plane gather. One-channel layers take the same path:
  direct loops (no im2col) were measured 3-20x slower on S1 x(100,1,28,28) W(30,1,5,5) and
  S2 x(64,1,28,28) W(32,1,3,3), so there is no direct path.
  Wide GEMMs with stride 1 and no padding or dilation (S3) use the flat column layout of
  :func:`_flat_cols`: each tap's column row is one contiguous copy of x.
* max pooling: direct loops, one pass for the value and the argmax, the 2x2 and 3x3 windows
  unrolled (a NumPy pass over x first decides whether NaNs need the exact loop); backward writes
  2x2/2 tilings in one branch-free pass of bit masks, otherwise zeroes and scatters through the
  argmax per (image, channel) plane.

Threads: numba's threads (``NUMBA_NUM_THREADS``, :func:`set_threads`) run the loops; each GEMM
is one BLAS call threaded by BLAS (``GEMM_THREADS`` can cut them into single-threaded shares
instead). The threading layer is ``tbb`` when the ``tbb`` package loads, else ``workqueue``,
unless the user sets ``NUMBA_THREADING_LAYER``: numba's OpenMP layer spin-waits after each loop and
fights the BLAS threads for the cores (see :mod:`fastconv.backends._numba_kernels`). ``workqueue``
does not support calling kernels from several Python threads at once; ``tbb`` does. NumPy allocates every array a
kernel writes (NumPy asks for huge pages; numba's own 4 KiB page faults cost up to 25 us each here).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from fastconv._shapes import Pair, conv_output_size

name = "numba"
xp = np

# Column bytes per chunk of images in the GEMM convolution: big enough for large GEMMs, small
# enough that the columns stay in the 32 MiB L3 between im2col and the GEMM. Measured with
# benchmarks/numba_chunk_bytes.py (S4-S6 forward + backward, 2 threads, GEMM_THREADS "blas" and
# "split" alike): 4, 16 and 64 MiB were level within this machine's noise, the whole batch in one
# chunk up to 2x slower (S4 292-520 ms against 187-274).
CHUNK_BYTES = 16 << 20
# Images with fewer output pixels than this go through one GEMM per chunk of images (wide layout,
# plus a transpose of the result) instead of one GEMM per image (measured: S3, OH*OW = 121).
WIDE_MAX_P = 256

# How GEMMs use the cores: "blas" (default) makes one call and lets BLAS thread it; "split" runs
# one single-threaded BLAS call per thread on its share of the images (or columns), from Python
# threads, so a thread that the OS preempts delays only its own share. Measured on the quiet 2-core
# machine (float32, forward / backward ms over five interleaved runs, "blas" vs "split"): S4 54-88 /
# 118-151 vs 84-112 / 186-206, S5 69-107 / 146-205 vs 119-132 / 155-196, S6 41-65 / 91-115 vs
# 63-76 / 108-123; S3 blas 1.4-1.6x faster. "split" only paid off while other processes competed
# for the cores (OpenBLAS's threads spin-wait for each other: 40 ms to 1.5 s for S4's forward GEMMs).
GEMM_THREADS = "blas"

# A kernel's first call per dtype that takes longer than this is compiling (a cache load takes a
# fraction of it): a note on stderr then says so, once per process, instead of a silent wait.
COMPILE_NOTICE_S = 1.0
_announce = True  # False while warmup compiles on purpose (it says so itself)

_kernels: Any = None
_executor: Any = None
_blas_controller: Any = None


def probe() -> str | None:
    """None when numba can be used, else why not (does not import numba)."""
    try:
        found = importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):  # a broken or blocked install (sys.modules["numba"] = None)
        found = False
    return None if found else "numba is not installed"


class _Announced:
    """A numba kernel whose first call per dtype, if it compiles, says so on stderr."""

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel
        self._ready: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernel, name)

    def __call__(self, *args: Any) -> Any:
        dtype = args[0].dtype.name  # every kernel's first argument has the compute dtype
        if dtype in self._ready or not _announce:
            return self._kernel(*args)
        timer = threading.Timer(COMPILE_NOTICE_S, _say_compiling, (dtype,))
        timer.daemon = True
        timer.start()
        try:
            return self._kernel(*args)
        finally:
            timer.cancel()
            self._ready.add(dtype)


def _say_compiling(dtype: str) -> None:
    global _announce
    if _announce:
        _announce = False
        print(
            f"fastconv: numba is compiling the numba backend's kernels for {dtype}: once per machine, "
            "3-4 s per kernel, then loaded from numba's cache; `fastconv warmup` compiles them all ahead of time",
            file=sys.stderr,
            flush=True,
        )


def _k() -> Any:
    """The kernels (each wrapped in :class:`_Announced`), imported, and the threading layer
    chosen, on first use."""
    global _kernels
    if _kernels is None:
        from fastconv.backends import _numba_kernels as k

        names = ("im2col_planes", "col2im_planes", "maxpool_forward", "maxpool_backward")
        _kernels = SimpleNamespace(**{name: _Announced(getattr(k, name)) for name in names})
    return _kernels


def owns(array: object) -> bool:
    return isinstance(array, np.ndarray)


def to_device(array: np.ndarray) -> np.ndarray:
    return np.asarray(array)


def to_host(array: np.ndarray) -> np.ndarray:
    return np.asarray(array)


# ----------------------------------------------------------------------------------------------
# threads, info, warmup
# ----------------------------------------------------------------------------------------------


def _blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see it)"
    blas = [
        f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return "; ".join(blas) or "none loaded"


def set_threads(n: int) -> None:
    """Use ``n`` threads for numba's loops and for BLAS together (``fastconv bench --threads``).

    ``n`` may not exceed ``NUMBA_NUM_THREADS`` (numba's pool is sized at start-up; by default the
    number of cores).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    import numba

    k = _k()  # noqa: F841 - chooses the threading layer before numba starts its pool
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(
            f"threads must be at most NUMBA_NUM_THREADS={limit} (numba's pool size), got {n}; "
            f"set NUMBA_NUM_THREADS={n} before starting Python"
        )
    numba.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        os.environ["OPENBLAS_NUM_THREADS"] = str(n)  # only effective before BLAS loads
        return
    threadpool_limits(limits=int(n), user_api="blas")


def info() -> dict[str, str]:
    """numba's version, threading layer, thread counts, BLAS threads, cache directory and GEMM threading."""
    import numba

    k = _k()  # noqa: F841
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        chosen = numba.config.THREADING_LAYER
        if chosen == "default":
            chosen = "the first that loads of " + ", ".join(numba.config.THREADING_LAYER_PRIORITY)
        layer = f"{chosen} (starts on first use)"
    env = os.environ.get("NUMBA_THREADING_LAYER")
    return {
        "numba": numba.__version__,
        "threading layer": layer + (" (from NUMBA_THREADING_LAYER)" if env else ""),
        "numba threads": f"{numba.get_num_threads()} of NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}",
        "blas": _blas_threads(),
        "cache dir": numba.config.CACHE_DIR or "next to the package (__pycache__)",
        "jit": "disabled (NUMBA_DISABLE_JIT=1)" if numba.config.DISABLE_JIT else "enabled",
        "gemm threads": "split: one single-threaded BLAS call per thread"
        if GEMM_THREADS == "split"
        else "blas: each GEMM one call, threaded by BLAS",
    }


def _compile(group: str) -> None:
    """Run every kernel of ``group`` ("conv", "pool" or "all") on tiny float32 and float64 inputs."""
    global _announce
    _announce = False  # compiling on purpose: the caller says so
    one, zero, two = (1, 1), (0, 0), (2, 2)
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
        if group in ("conv", "all"):
            W = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
            y = conv2d_forward(x, W, None, one, one, one)  # im2col_planes
            conv2d_backward(y, x, W, one, one, one, True)  # col2im_planes
        if group in ("pool", "all"):
            y, am = maxpool2d_forward(x, 2, 2, two, zero, one)
            maxpool2d_backward(y, am, x.shape, 2, 2, two, zero, one)


def warmup(parallel: bool = True) -> float:
    """Compile (or load from numba's on-disk cache) every kernel for float32 and float64.

    Returns the seconds it took. With an empty cache and ``parallel``, a child process compiles
    the pooling kernels while this one compiles the convolution kernels (numba compiles in one
    thread), and this process then loads the child's work from the cache.
    """
    import numba

    global _announce
    _announce = False  # compiling on purpose: `fastconv warmup` says so
    start = time.perf_counter()
    k = _k()
    if parallel and not numba.config.DISABLE_JIT and (os.cpu_count() or 1) > 1:
        misses = len(k.im2col_planes.stats.cache_misses)
        x = np.zeros((1, 1, 2, 2), dtype=np.float32)
        conv2d_forward(x, np.zeros((1, 1, 1, 1), np.float32), None, (1, 1), (0, 0), (1, 1))
        if len(k.im2col_planes.stats.cache_misses) > misses:  # compiled, not loaded: the cache is cold
            root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
            code = "from fastconv.backends import numba_backend as nb; nb._compile('pool')"
            child = subprocess.Popen([sys.executable, "-c", code], env=env)
            try:
                _compile("conv")
            finally:
                child.wait()
    _compile("all")
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# the contract's kernels
# ----------------------------------------------------------------------------------------------


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) (the book's layout)."""
    n, c = x.shape[:2]
    x = np.ascontiguousarray(x)
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    col = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    _k().im2col_planes(x, 0, col, False, kh, kw, *stride, *pad, *dilation, oh, ow)
    # col_book[n*OH*OW + p, k] = col[n, k, p]
    return np.ascontiguousarray(col.transpose(0, 2, 1)).reshape(n * oh * ow, c * kh * kw)


def col2im(
    col: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), the adjoint of :func:`im2col`."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    planes = np.ascontiguousarray(col.reshape(n, oh * ow, c * kh * kw).transpose(0, 2, 1))
    dx = np.empty(x_shape, dtype=col.dtype)
    _k().col2im_planes(planes, 0, dx, False, kh, kw, *stride, *pad, *dilation, oh, ow)
    return dx


def _chunk(n: int, per_image: int) -> int:
    """Images per chunk: about CHUNK_BYTES of columns, at least one image per thread, and chunks of
    equal size (64 images in chunks of 59 would leave a last chunk of 5 and a second buffer)."""
    import numba

    step = max(1, min(n, max(numba.get_num_threads(), CHUNK_BYTES // max(per_image, 1))))
    chunks = -(-n // step)
    return max(1, -(-n // chunks))


def _mm_cols(lo: int, hi: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])  # out[:, lo:hi] = a @ b[:, lo:hi]


def _mm_batch(lo: int, hi: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b[lo:hi], out=out[lo:hi])  # out[n] = a @ b[n]


def _grad_cols(lo: int, hi: int, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    return d[:, lo:hi] @ c[:, lo:hi].T  # sum over columns lo..hi of d[:, q] c[:, q].T


def _grad_batch(lo: int, hi: int, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    # sum_n d[n] @ c[n].T; np.dot takes the transposed operand straight to BLAS (batched matmul on
    # transposed views fell back to NumPy's own loop: 10 GFLOP/s, measured on S4)
    acc = np.dot(d[lo], c[lo].T)
    for i in range(lo + 1, hi):
        acc += np.dot(d[i], c[i].T)
    return acc


def _split(fn: Any, total: int, *args: Any) -> list[Any]:
    """Run fn(lo, hi, *args) over [0, total): one call threaded by BLAS, or with GEMM_THREADS="split"
    one contiguous share per numba thread, each in its own Python thread with single-threaded BLAS
    (NumPy's matmul releases the GIL); a list of the results in order."""
    global _executor, _blas_controller
    import numba

    threads = min(numba.get_num_threads(), total)
    if GEMM_THREADS != "split" or threads <= 1:
        return [fn(0, total, *args)]
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return [fn(0, total, *args)]
        _blas_controller = ThreadpoolController().select(user_api="blas")
    if _executor is None or _executor._max_workers < threads:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fastconv-gemm")
    cuts = [total * t // threads for t in range(threads + 1)]
    with _blas_controller.limit(limits=1):
        futures = [_executor.submit(fn, cuts[t], cuts[t + 1], *args) for t in range(threads)]
        return [f.result() for f in futures]


def _flat_cols(wide: bool, oh: int, w: int, ow: int, stride: Pair, pad: Pair, dilation: Pair) -> int:
    """Column row length OH*W of the flat layout, or 0 where it does not apply.

    Flat layout (wide GEMMs, stride 1, no padding or dilation): each tap's column row is one
    contiguous run of x, ``x[n, c].ravel()[i*W + j :][: OH*W]``, so im2col is a plain copy (S3's rows
    of 11 elements made im2col cost as much as its GEMM); the GEMM also computes the W - OW spill-over
    columns of each output row (18% more work on S3), which are dropped with the transpose.
    """
    if wide and tuple(stride) == (1, 1) and tuple(pad) == (0, 0) and tuple(dilation) == (1, 1) and ow < w:
        return oh * w
    return 0


def _wide(p: int) -> bool:
    """One GEMM over a chunk of images (wide layout) when each image's GEMM would be narrow."""
    return p < WIDE_MAX_P


def conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: Pair, pad: Pair, dilation: Pair
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW).

    y[n] = [W2d | b] @ [col[n]; 1]: the bias rides in the GEMM as a row of ones under the columns.
    """
    k = _k()
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    f, c, kh, kw = W.shape
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    kk, p = c * kh * kw, oh * ow
    y = np.empty((n, f, p), dtype=x.dtype)
    w2 = W.reshape(f, kk)
    if b is not None:
        w2 = np.concatenate([w2, b.reshape(f, 1)], axis=1)
    k1 = w2.shape[1]
    wide = _wide(p)
    pc = _flat_cols(wide, oh, x.shape[3], ow, stride, pad, dilation) or p  # column row length
    step = _chunk(n, k1 * pc * x.itemsize)
    col = None
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if col is None or (col.shape[1] if wide else col.shape[0]) != m:
            col = np.empty((k1, m, pc) if wide else (m, k1, p), dtype=x.dtype)
            if wide:
                col[kk:] = 1  # the bias row; im2col_planes writes rows [0, kk) only
            else:
                col[:, kk:] = 1
        k.im2col_planes(x, n0, col, wide, kh, kw, *stride, *pad, *dilation, oh, ow)
        if wide:  # (F, K) @ (K, m*P) -> (F, m, P) -> y[n0:n0+m] (N, F, P), dropping flat-layout spill-over
            c2 = col.reshape(k1, m * pc)
            yw = np.empty((f, m * pc), dtype=x.dtype)
            _split(_mm_cols, m * pc, w2, c2, yw)
            y4 = y.reshape(n, f, oh, ow)
            y4[n0 : n0 + m] = yw.reshape(f, m, oh, pc // oh)[:, :, :, :ow].transpose(1, 0, 2, 3)
        else:  # y[n] = W2d @ col[n]: (F, K) @ (K, OH*OW), written in place
            _split(_mm_batch, m, w2, col, y[n0 : n0 + m])
    return y.reshape(n, f, oh, ow)


def conv2d_backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout: (N, F, OH, OW) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,).

    [dW | db] = sum_n dout[n] @ [col[n]; 1].T (the row of ones sums dout for db in the same GEMM);
    dx = col2im(W2d.T @ dout[n]).
    """
    k = _k()
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    f, c, kh, kw = W.shape
    oh, ow = dout.shape[2:]
    kk, p = c * kh * kw, oh * ow
    d3 = dout.reshape(n, f, p)
    w2t = np.ascontiguousarray(W.reshape(f, kk).T)
    dwb = np.zeros((f, kk + 1), dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    wide = _wide(p)
    pc = _flat_cols(wide, oh, x.shape[3], ow, stride, pad, dilation) or p  # column row length
    step = _chunk(n, (2 * kk + 1) * pc * x.itemsize if need_dx else (kk + 1) * pc * x.itemsize)
    col = None
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if col is None or (col.shape[1] if wide else col.shape[0]) != m:
            col = np.empty((kk + 1, m, pc) if wide else (m, kk + 1, p), dtype=x.dtype)
            if wide:
                col[kk] = 1
            else:
                col[:, kk] = 1
        k.im2col_planes(x, n0, col, wide, kh, kw, *stride, *pad, *dilation, oh, ow)
        if wide:
            d_m = dout[n0 : n0 + m].transpose(1, 0, 2, 3)  # (F, m, OH, OW)
            if pc != p:  # flat layout: dout with zeros in the spill-over columns OW..W-1
                dt = np.zeros((f, m, oh, pc // oh), dtype=x.dtype)
                dt[:, :, :, :ow] = d_m
                dt = dt.reshape(f, m * pc)
            else:
                dt = np.ascontiguousarray(d_m).reshape(f, m * p)
            c2 = col.reshape(kk + 1, m * pc)
            # [dW | db] += dout (F, m*P) @ [col; 1].T (m*P, K + 1), the sum over m*P cut into shares
            for part in _split(_grad_cols, m * pc, dt, c2):
                dwb += part
            if need_dx:
                dcol = np.empty((kk, m * pc), dtype=x.dtype)  # W2d.T @ dout: (K, F) @ (F, m*P)
                _split(_mm_cols, m * pc, w2t, dt, dcol)
                k.col2im_planes(
                    dcol.reshape(kk, m, pc), n0, dx, True, kh, kw, *stride, *pad, *dilation, oh, ow
                )
        else:
            # [dW | db] += sum_n dout[n] @ [col[n]; 1].T: (F, P) @ (P, K + 1)
            d_m = d3[n0 : n0 + m]
            for part in _split(_grad_batch, m, d_m, col):
                dwb += part
            if need_dx:
                dcol = np.empty((m, kk, p), dtype=x.dtype)  # dcol[n] = W2d.T @ dout[n]: (K, F) @ (F, P)
                _split(_mm_batch, m, w2t, d_m, dcol)
                k.col2im_planes(dcol, n0, dx, False, kh, kw, *stride, *pad, *dilation, oh, ow)
    return dx, np.ascontiguousarray(dwb[:, :kk]).reshape(W.shape), np.ascontiguousarray(dwb[:, kk])


def maxpool2d_forward(
    x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, C, H, W) -> y: (N, C, OH, OW) and argmax (N, C, OH, OW) int32 in [0, kh*kw)."""
    n, c = x.shape[:2]
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int32)
    # One vectorised NumPy pass (max propagates NaN) decides whether the kernel must test for NaN:
    # cheaper than a NaN test on every window element (measured: 1.5-2.5x slower kernel).
    nan_aware = x.size > 0 and bool(np.isnan(x.max()))
    _k().maxpool_forward(x, y, argmax, kh, kw, *stride, *pad, *dilation, nan_aware)
    return y, argmax


def maxpool2d_backward(
    dout: np.ndarray,
    argmax: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> np.ndarray:
    """dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W); each window's gradient goes to its argmax."""
    dx = np.empty(x_shape, dtype=dout.dtype)
    bits = np.dtype(f"i{dout.itemsize}")  # same-size integer views, for the bit masks
    dout = np.ascontiguousarray(dout)
    _k().maxpool_backward(dout, argmax, dx, dout.view(bits), dx.view(bits), kh, kw, *stride, *pad, *dilation)
    return dx
