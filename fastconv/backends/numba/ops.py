"""The numba backend's six contract kernels: im2col + GEMM convolution, direct max pooling.

* convolution: im2col + GEMM, images in chunks of about ``CHUNK_BYTES`` of columns, so that they stay
  in L3 between im2col and the GEMM. Per-image column layout ``col[n]: (C*kh*kw, OH*OW)``, so
  ``W2d @ col[n]`` is already image ``n`` of the NCHW output (no transpose); for small images
  (``OH*OW < WIDE_MAX_P``) one wide GEMM ``(C*kh*kw, B*OH*OW)`` per chunk instead, plus one transpose
  of the result, because a GEMM per small image is too thin for BLAS. The bias rides in the GEMM as a
  row of ones under the columns (no extra pass), and the same row gives db inside the dW GEMM. dx is
  ``col2im(W2d.T @ dout)`` with a per-plane gather. Wide GEMMs with stride 1 and no padding or
  dilation use the flat column layout of :func:`_flat_cols`: each tap's column row is one
  contiguous copy of x.
* max pooling: direct loops, one pass for the value and the argmax, the 2x2 and 3x3 windows written
  out (a NumPy pass over x first decides whether NaNs need the exact loop); backward writes 2x2/2
  tilings in one branch-free pass of bit masks, otherwise zeroes and scatters through the argmax per
  (image, channel) plane.

GEMMs go through NumPy's BLAS, one call threaded by BLAS, or cut into single-threaded shares with
``fastconv.configure(gemm_threads="split")``. NumPy allocates every array a kernel writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconv._config import settings
from fastconv._shapes import Pair, bad_argmax_error, conv_output_size
from fastconv.backends.numba import kernels, runtime, winograd

# Column bytes per chunk of images: big enough for large GEMMs, small enough that the columns stay in
# L3 between im2col and the GEMM (benchmarks/numba_chunk_bytes.py measures the choice).
CHUNK_BYTES = 16 << 20
# Images with fewer output pixels than this go through one GEMM per chunk of images (wide layout)
# instead of one GEMM per image, which is too thin for BLAS.
WIDE_MAX_P = 256

_im2col_planes = runtime.Announced(kernels.im2col_planes)
_col2im_planes = runtime.Announced(kernels.col2im_planes)
_maxpool_forward = runtime.Announced(kernels.maxpool_forward)
_maxpool_backward = runtime.Announced(kernels.maxpool_backward)


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) (the book's layout)."""
    n, c = x.shape[:2]
    x = np.ascontiguousarray(x)
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    col = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    _im2col_planes(n * c, x, 0, col, False, kh, kw, *stride, *pad, *dilation, oh, ow)
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
    _col2im_planes(n * c, planes, 0, dx, False, kh, kw, *stride, *pad, *dilation, oh, ow)
    return dx


def _chunk(n: int, per_image: int) -> int:
    """Images per chunk: about CHUNK_BYTES of columns, at least one image per thread, and chunks of
    equal size (64 images in chunks of 59 would leave a last chunk of 5 and a second buffer)."""
    step = max(1, min(n, max(runtime.num_threads(), CHUNK_BYTES // max(per_image, 1))))
    chunks = -(-n // step)
    return max(1, -(-n // chunks))


def _mm_cols(lo: int, hi: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])  # out[:, lo:hi] = a @ b[:, lo:hi]


def _mm_batch(lo: int, hi: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b[lo:hi], out=out[lo:hi])  # out[n] = a @ b[n]


def _grad_cols(lo: int, hi: int, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    return d[:, lo:hi] @ c[:, lo:hi].T  # sum over columns lo..hi of d[:, q] c[:, q].T


def _grad_batch(lo: int, hi: int, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    # sum_n d[n] @ c[n].T; np.dot takes the transposed operand straight to BLAS, where a batched
    # matmul on transposed views falls back to NumPy's own, much slower loop
    acc = np.dot(d[lo], c[lo].T)
    for i in range(lo + 1, hi):
        acc += np.dot(d[i], c[i].T)
    return acc


def _split(fn: Any, total: int, *args: Any) -> list[Any]:
    """Run fn(lo, hi, *args) over [0, total) and return the results in order: one call threaded by
    BLAS, or with ``gemm_threads="split"`` one contiguous share per thread, each with
    single-threaded BLAS (NumPy's matmul releases the GIL)."""
    if settings.gemm_threads != "split" or runtime.num_threads() <= 1:
        return [fn(0, total, *args)]
    with runtime.single_threaded_blas:
        return runtime.parallel_for(fn, total, *args)


def _flat_cols(wide: bool, oh: int, w: int, ow: int, stride: Pair, pad: Pair, dilation: Pair) -> int:
    """Column row length OH*W of the flat layout, or 0 where it does not apply.

    Flat layout (wide GEMMs, stride 1, no padding or dilation): each tap's column row is one
    contiguous run of x, ``x[n, c].ravel()[i*W + j :][: OH*W]``, so im2col is a plain copy (for short
    rows, per-row copies cost as much as the GEMM); the GEMM also computes the W - OW spill-over
    columns of each output row (more work, still cheaper), which are dropped with the transpose.
    """
    if wide and tuple(stride) == (1, 1) and tuple(pad) == (0, 0) and tuple(dilation) == (1, 1) and ow < w:
        return oh * w
    return 0


def _wide(p: int) -> bool:
    """One GEMM over a chunk of images (wide layout) when each image's GEMM would be narrow."""
    return p < WIDE_MAX_P


def _direct() -> Any:
    from fastconv.backends.numba import direct  # here, not at the top: direct.py uses this module

    return direct


def conv2d_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    algorithm: str = "gemm",
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW).

    "gemm": y[n] = [W2d | b] @ [col[n]; 1], the bias riding in the GEMM as a row of ones under the
    columns. "winograd"/"winograd2" and "direct": :mod:`.winograd`, :mod:`.direct`.
    """
    if algorithm in winograd.TILE:
        return winograd.forward(x, W, b, pad, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        return _direct().forward(x, W, b, stride, pad, dilation)
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
        _im2col_planes(m * c, x, n0, col, wide, kh, kw, *stride, *pad, *dilation, oh, ow)
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
    algorithm: str = "gemm",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout: (N, F, OH, OW) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,).

    "gemm": [dW | db] = sum_n dout[n] @ [col[n]; 1].T (the row of ones sums dout for db in the same
    GEMM); dx = col2im(W2d.T @ dout[n]). "winograd"/"winograd2": :mod:`.winograd`. "direct": dx by
    :func:`.direct.backward_dx` (no col2im), dW and db as "gemm".
    """
    if algorithm in winograd.TILE:
        return winograd.backward(dout, x, W, pad, need_dx=need_dx, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        _, dW, db = conv2d_backward(dout, x, W, stride, pad, dilation, need_dx=False)
        dx = _direct().backward_dx(dout, W, x.shape, stride, pad, dilation) if need_dx else None
        return dx, dW, db
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
        _im2col_planes(m * c, x, n0, col, wide, kh, kw, *stride, *pad, *dilation, oh, ow)
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
                _col2im_planes(
                    m * c, dcol.reshape(kk, m, pc), n0, dx, True, kh, kw, *stride, *pad, *dilation, oh, ow
                )
        else:
            # [dW | db] += sum_n dout[n] @ [col[n]; 1].T: (F, P) @ (P, K + 1)
            d_m = d3[n0 : n0 + m]
            for part in _split(_grad_batch, m, d_m, col):
                dwb += part
            if need_dx:
                dcol = np.empty((m, kk, p), dtype=x.dtype)  # dcol[n] = W2d.T @ dout[n]: (K, F) @ (F, P)
                _split(_mm_batch, m, w2t, d_m, dcol)
                _col2im_planes(m * c, dcol, n0, dx, False, kh, kw, *stride, *pad, *dilation, oh, ow)
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
    # cheaper than a NaN test on every window element, which slows the kernel down.
    nan_aware = x.size > 0 and bool(np.isnan(x.max()))
    _maxpool_forward(n * c, x, y, argmax, kh, kw, *stride, *pad, *dilation, nan_aware)
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
    """dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W); each window's gradient goes to its argmax.

    Raises ValueError when an argmax value lies outside [0, kh*kw) (the kernel skips those windows).
    """
    dx = np.empty(x_shape, dtype=dout.dtype)
    bits = np.dtype(f"i{dout.itemsize}")  # same-size integer views, for the bit masks
    dout = np.ascontiguousarray(dout)
    bad = _maxpool_backward(
        x_shape[0] * x_shape[1],
        dout,
        argmax,
        dx,
        dout.view(bits),
        dx.view(bits),
        kh,
        kw,
        *stride,
        *pad,
        *dilation,
    )
    if sum(bad):
        raise bad_argmax_error(argmax, kh * kw)
    return dx
