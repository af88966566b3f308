"""The numba backend's convolution kernels (contract v2): im2col + GEMM, grouped and depthwise direct
kernels, NHWC. Pooling lives in :mod:`.pooling`.

* groups == 1, NCHW, "gemm": im2col + GEMM, images in chunks of about ``CHUNK_BYTES`` of columns, so
  that they stay in L3 between im2col and the GEMM. Per-image column layout ``col[n]: (C*kh*kw,
  OH*OW)``, so ``W2d @ col[n]`` is already image ``n`` of the NCHW output (no transpose); for small
  images (``OH*OW < WIDE_MAX_P``) one wide GEMM ``(C*kh*kw, B*OH*OW)`` per chunk instead, plus one
  transpose of the result, because a GEMM per small image is too thin for BLAS. The bias rides in the
  GEMM as a row of ones under the columns (no extra pass), and the same row gives db inside the dW
  GEMM. dx is ``col2im(W2d.T @ dout)`` with a per-plane gather. Wide GEMMs with stride 1 and no
  padding or dilation use the flat column layout of :func:`_flat_cols`: each tap's column row is one
  contiguous copy of x. "winograd"/"winograd2", "direct": :mod:`.winograd`, :mod:`.direct`.
* groups == 1, NHWC: the NHWC im2col, rows (n, oh, ow) and columns (i, j, c) (each tap one contiguous
  copy of C values), and one GEMM per chunk whose (N*OH*OW, F) result IS the NHWC output; backward:
  [dW | db] from dout2d.T @ [cols | 1], dx by the NHWC col2im of dout2d @ W2d.
* groups > 1: "direct" runs :func:`.direct.grouped_forward` and its backward (depthwise and few
  channels per group); "gemm" one groups == 1 convolution per group on the group's channel slice.
* pad is (top, bottom, left, right) throughout; the kernels take the top and left padding for their
  index math, and the output sizes come from :func:`fastconv._shapes.conv_output_size`.

GEMMs go through NumPy's BLAS, one call threaded by BLAS, or cut into single-threaded shares with
``fastconv.configure(gemm_threads="split")``. NumPy allocates every array a kernel writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconv._config import settings
from fastconv._shapes import Pad4, Pair, as_pad4, conv_output_size, layout_name
from fastconv.backends.numba import kernels, runtime, winograd
from fastconv.backends.numba.algorithms import choose_backward_data

# Column bytes per chunk of images: big enough for large GEMMs, small enough that the columns stay in
# L3 between im2col and the GEMM (benchmarks/numba_chunk_bytes.py measures the choice).
CHUNK_BYTES = 16 << 20
# Images with fewer output pixels than this go through one GEMM per chunk of images (wide layout)
# instead of one GEMM per image, which is too thin for BLAS.
WIDE_MAX_P = 256
# NCHW im2col + GEMM convolutions with at least this many input channels run on NHWC copies of their
# arrays: the NHWC im2col copies runs of C contiguous values per tap, where the NCHW one copies rows of
# OW (strided by the stride), and the NHWC GEMM's output is y itself; with the copies' cost counted
# this measured faster on S3, S6 and the transposed layer X1 (BENCHMARKS.md, "The conv family").
NHWC_GEMM_MIN_C = 16

_im2col_planes = runtime.Announced(kernels.im2col_planes)
_col2im_planes = runtime.Announced(kernels.col2im_planes)
_im2col_nhwc = runtime.Announced(kernels.im2col_nhwc)
_col2im_nhwc = runtime.Announced(kernels.col2im_nhwc)


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) (the book's layout)."""
    n, c = x.shape[:2]
    x = np.ascontiguousarray(x)
    pad = _pad4(pad)
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    col = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    _im2col_planes(n * c, x, 0, col, False, kh, kw, *stride, pad[0], pad[2], *dilation, oh, ow)
    # col_book[n*OH*OW + p, k] = col[n, k, p]
    return np.ascontiguousarray(col.transpose(0, 2, 1)).reshape(n * oh * ow, c * kh * kw)


def col2im(
    col: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), the adjoint of :func:`im2col`."""
    n, c, h, w = x_shape
    pad = _pad4(pad)
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    planes = np.ascontiguousarray(col.reshape(n, oh * ow, c * kh * kw).transpose(0, 2, 1))
    dx = np.empty(x_shape, dtype=col.dtype)
    _col2im_planes(n * c, planes, 0, dx, False, kh, kw, *stride, pad[0], pad[2], *dilation, oh, ow)
    return dx


NHWC, NCHW = (0, 2, 3, 1), (0, 3, 1, 2)  # the transposes from NCHW and from NHWC


def _copy_images(lo: int, hi: int, src: np.ndarray, out: np.ndarray, axes: tuple[int, ...]) -> None:
    np.copyto(out[lo:hi], src[lo:hi].transpose(axes))  # out[n] = src[n] transposed (NumPy drops the GIL)


def _relayout(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` (N, ., ., .) transposed by ``axes`` into a fresh C-contiguous array, images shared among
    the threads (one NumPy copy would run on one core)."""
    out = np.empty(tuple(a.shape[i] for i in axes), dtype=a.dtype)
    runtime.parallel_for(_copy_images, a.shape[0], a, out, axes)
    return out


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


def _flat_cols(wide: bool, oh: int, w: int, ow: int, stride: Pair, pad: Pad4, dilation: Pair) -> int:
    """Column row length OH*W of the flat layout, or 0 where it does not apply.

    Flat layout (wide GEMMs, stride 1, no padding or dilation): each tap's column row is one
    contiguous run of x, ``x[n, c].ravel()[i*W + j :][: OH*W]``, so im2col is a plain copy (for short
    rows, per-row copies cost as much as the GEMM); the GEMM also computes the W - OW spill-over
    columns of each output row (more work, still cheaper), which are dropped with the transpose.
    """
    if (
        wide
        and tuple(stride) == (1, 1)
        and tuple(pad) == (0, 0, 0, 0)
        and tuple(dilation) == (1, 1)
        and ow < w
    ):
        return oh * w
    return 0


def _wide(p: int) -> bool:
    """One GEMM over a chunk of images (wide layout) when each image's GEMM would be narrow."""
    return p < WIDE_MAX_P


def _direct() -> Any:
    from fastconv.backends.numba import direct  # here, not at the top: direct.py uses this module

    return direct


def _mm_rows(lo: int, hi: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a[lo:hi], b, out=out[lo:hi])  # out[lo:hi] = a[lo:hi] @ b


def _grad_rows(lo: int, hi: int, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.dot(d[lo:hi].T, c[lo:hi])  # sum over rows lo..hi of d[r].T c[r]


# ----------------------------------------------------------------------------------------------
# the contract's entry points: routing by groups, layout and algorithm
# ----------------------------------------------------------------------------------------------


def _pad4(pad: Pad4 | Pair) -> Pad4:
    """pad as four Python ints (top, bottom, left, right); a symmetric (h, w) pair, as
    conv_output_size reads it, is (h, h, w, w)."""
    top, bottom, left, right = as_pad4(pad)
    return (int(top), int(bottom), int(left), int(right))


def conv2d_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    algorithm: str = "gemm",
) -> np.ndarray:
    """x: (N, C, H, W) or (N, H, W, C), W: (F, C // groups, kh, kw), b: (F,) or None -> y in x's layout.

    groups == 1: "gemm" (NCHW or NHWC im2col + GEMM), "winograd"/"winograd2" (NCHW), "direct" (NCHW;
    NHWC through NCHW copies). groups > 1: "direct" the grouped direct kernels, anything else one
    GEMM convolution per group.
    """
    layout_name(layout)
    pad = _pad4(pad)
    if groups > 1:
        if algorithm == "direct":
            return _direct().grouped_forward(x, W, b, stride, pad, dilation, groups, layout)
        return _per_group_forward(x, W, b, stride, pad, dilation, groups, layout)
    if layout == "NHWC":
        if algorithm == "gemm":
            return _nhwc_forward(x, W, b, stride, pad, dilation)
        y = conv2d_forward(_relayout(x, NCHW), W, b, stride, pad, dilation, algorithm=algorithm)
        return _relayout(y, NHWC)
    if algorithm in winograd.TILE:
        return winograd.forward(x, W, b, pad, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        return _direct().forward(x, W, b, stride, pad, dilation)
    if x.shape[1] >= NHWC_GEMM_MIN_C:
        return _relayout(_nhwc_forward(_relayout(x, NHWC), W, b, stride, pad, dilation), NCHW)
    return _gemm_forward(x, W, b, stride, pad, dilation)


def conv2d_backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
    need_dx: bool = True,
    *,
    algorithm: str = "gemm",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout in y's layout -> dx (x's layout) or None, dW (F, C // groups, kh, kw), db (F,).

    Algorithms as in :func:`conv2d_forward`; groups == 1 NCHW "direct": dx by
    :func:`.direct.backward_dx` (no col2im), dW and db as "gemm".
    """
    layout_name(layout)
    pad = _pad4(pad)
    if groups > 1:
        if algorithm == "direct":
            return _direct().grouped_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx)
        return _per_group_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx)
    if layout == "NHWC":
        if algorithm == "gemm":
            return _nhwc_backward(dout, x, W, stride, pad, dilation, need_dx)
        dx, dW, db = conv2d_backward(
            _relayout(dout, NCHW),
            _relayout(x, NCHW),
            W,
            stride,
            pad,
            dilation,
            need_dx=need_dx,
            algorithm=algorithm,
        )
        return (None if dx is None else _relayout(dx, NHWC)), dW, db
    if algorithm in winograd.TILE:
        return winograd.backward(dout, x, W, pad, need_dx=need_dx, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        _, dW, db = _gemm_backward(dout, x, W, stride, pad, dilation, need_dx=False)
        dx = _direct().backward_dx(dout, W, x.shape, stride, pad, dilation) if need_dx else None
        return dx, dW, db
    if x.shape[1] >= NHWC_GEMM_MIN_C:
        dx, dW, db = _nhwc_backward(
            _relayout(dout, NHWC), _relayout(x, NHWC), W, stride, pad, dilation, need_dx
        )
        return (None if dx is None else _relayout(dx, NCHW)), dW, db
    return _gemm_backward(dout, x, W, stride, pad, dilation, need_dx)


def conv2d_backward_data(
    dout: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
) -> np.ndarray:
    """dx alone (no x): the adjoint of :func:`conv2d_forward` in x, x_shape in the layout's order (the
    forward of a transposed convolution). The path is :func:`.algorithms.choose_backward_data`'s."""
    layout_name(layout)
    pad = _pad4(pad)
    x_shape = (int(x_shape[0]), int(x_shape[1]), int(x_shape[2]), int(x_shape[3]))
    dout = np.ascontiguousarray(dout)
    path = choose_backward_data(dout.shape, W.shape, x_shape, stride, dilation, groups, layout)
    if path == "direct" and groups > 1:
        return _direct().grouped_dx(dout, W, x_shape, stride, pad, dilation, groups, layout)
    if groups > 1:
        return _per_group_dx(dout, W, x_shape, stride, pad, dilation, groups, layout)
    if layout == "NHWC":
        return _nhwc_dx(dout, W, x_shape, stride, pad, dilation)
    if path == "nhwc":
        n, c, h, w = x_shape
        return _relayout(_nhwc_dx(_relayout(dout, NHWC), W, (n, h, w, c), stride, pad, dilation), NCHW)
    return _gemm_dx(dout, W, x_shape, stride, pad, dilation)


# ----------------------------------------------------------------------------------------------
# groups == 1, NCHW: im2col + GEMM
# ----------------------------------------------------------------------------------------------


def _gemm_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: Pair, pad: Pad4, dilation: Pair
) -> np.ndarray:
    """y[n] = [W2d | b] @ [col[n]; 1], the bias riding in the GEMM as a row of ones under the columns."""
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    f, c, kh, kw = W.shape
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    top, left = pad[0], pad[2]
    kk, p = c * kh * kw, oh * ow
    y = np.empty((n, f, p), dtype=x.dtype)
    w2 = np.asarray(W, dtype=x.dtype).reshape(f, kk)
    if b is not None:
        w2 = np.concatenate([w2, np.asarray(b, dtype=x.dtype).reshape(f, 1)], axis=1)
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
        _im2col_planes(m * c, x, n0, col, wide, kh, kw, *stride, top, left, *dilation, oh, ow)
        if wide:  # (F, K) @ (K, m*P) -> (F, m, P) -> y[n0:n0+m] (N, F, P), dropping flat-layout spill-over
            c2 = col.reshape(k1, m * pc)
            yw = np.empty((f, m * pc), dtype=x.dtype)
            _split(_mm_cols, m * pc, w2, c2, yw)
            y4 = y.reshape(n, f, oh, ow)
            y4[n0 : n0 + m] = yw.reshape(f, m, oh, pc // oh)[:, :, :, :ow].transpose(1, 0, 2, 3)
        else:  # y[n] = W2d @ col[n]: (F, K) @ (K, OH*OW), written in place
            _split(_mm_batch, m, w2, col, y[n0 : n0 + m])
    return y.reshape(n, f, oh, ow)


def _gemm_backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """[dW | db] = sum_n dout[n] @ [col[n]; 1].T (the row of ones sums dout for db in the same GEMM);
    dx = col2im(W2d.T @ dout[n])."""
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    n = x.shape[0]
    f, c, kh, kw = W.shape
    oh, ow = dout.shape[2:]
    top, left = pad[0], pad[2]
    kk, p = c * kh * kw, oh * ow
    d3 = dout.reshape(n, f, p)
    w2t = np.ascontiguousarray(np.asarray(W, dtype=x.dtype).reshape(f, kk).T)
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
        _im2col_planes(m * c, x, n0, col, wide, kh, kw, *stride, top, left, *dilation, oh, ow)
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
                    m * c,
                    dcol.reshape(kk, m, pc),
                    n0,
                    dx,
                    True,
                    kh,
                    kw,
                    *stride,
                    top,
                    left,
                    *dilation,
                    oh,
                    ow,
                )
        else:
            # [dW | db] += sum_n dout[n] @ [col[n]; 1].T: (F, P) @ (P, K + 1)
            d_m = d3[n0 : n0 + m]
            for part in _split(_grad_batch, m, d_m, col):
                dwb += part
            if need_dx:
                dcol = np.empty((m, kk, p), dtype=x.dtype)  # dcol[n] = W2d.T @ dout[n]: (K, F) @ (F, P)
                _split(_mm_batch, m, w2t, d_m, dcol)
                _col2im_planes(m * c, dcol, n0, dx, False, kh, kw, *stride, top, left, *dilation, oh, ow)
    return dx, np.ascontiguousarray(dwb[:, :kk]).reshape(W.shape), np.ascontiguousarray(dwb[:, kk])


def _gemm_dx(
    dout: np.ndarray, W: np.ndarray, x_shape: tuple[int, ...], stride: Pair, pad: Pad4, dilation: Pair
) -> np.ndarray:
    """dx = col2im(W2d.T @ dout[n]) alone (conv2d_backward_data, NCHW): per chunk of images, the GEMM
    then the per-plane col2im gather."""
    n, c = x_shape[:2]
    f, _, kh, kw = W.shape
    oh, ow = dout.shape[2:]
    kk, p = c * kh * kw, oh * ow
    w2t = np.ascontiguousarray(np.asarray(W, dtype=dout.dtype).reshape(f, kk).T)
    dx = np.empty(x_shape, dtype=dout.dtype)
    wide = _wide(p)
    step = _chunk(n, kk * p * dout.itemsize)
    d3 = dout.reshape(n, f, p)
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if wide:  # W2d.T @ dout: (K, F) @ (F, m*P)
            dt = np.ascontiguousarray(dout[n0 : n0 + m].transpose(1, 0, 2, 3)).reshape(f, m * p)
            dcol = np.empty((kk, m * p), dtype=dout.dtype)
            _split(_mm_cols, m * p, w2t, dt, dcol)
            dcol = dcol.reshape(kk, m, p)
        else:  # dcol[n] = W2d.T @ dout[n]: (K, F) @ (F, P)
            dcol = np.empty((m, kk, p), dtype=dout.dtype)
            _split(_mm_batch, m, w2t, d3[n0 : n0 + m], dcol)
        _col2im_planes(m * c, dcol, n0, dx, wide, kh, kw, *stride, pad[0], pad[2], *dilation, oh, ow)
    return dx


# ----------------------------------------------------------------------------------------------
# groups == 1, NHWC: im2col + GEMM with rows (n, oh, ow) and columns (i, j, c)
# ----------------------------------------------------------------------------------------------


def _nhwc_w2(W: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """W2d[f, (i*kw + j)*C + c] = W[f, c, i, j]: the NHWC column order."""
    f = W.shape[0]
    return np.ascontiguousarray(np.asarray(W, dtype=dtype).transpose(0, 2, 3, 1)).reshape(f, -1)


def _nhwc_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: Pair, pad: Pad4, dilation: Pair
) -> np.ndarray:
    """y2d (N*OH*OW, F) = [cols | 1] @ [W2d | b].T per chunk of images: y2d is the NHWC output."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    f, _, kh, kw = W.shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    kk, p = kh * kw * c, oh * ow
    w2 = _nhwc_w2(W, x.dtype)
    if b is not None:
        w2 = np.concatenate([w2, np.asarray(b, dtype=x.dtype).reshape(f, 1)], axis=1)
    k1 = w2.shape[1]
    w2t = np.ascontiguousarray(w2.T)  # (K + 1, F)
    y = np.empty((n * p, f), dtype=x.dtype)
    step = _chunk(n, k1 * p * x.itemsize)
    col = None
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if col is None or col.shape[0] != m * p:
            col = np.empty((m * p, k1), dtype=x.dtype)
            col[:, kk:] = 1  # the bias column; im2col_nhwc writes columns [0, K) only
        _im2col_nhwc(m * oh, x, n0, col, *stride, pad[0], pad[2], *dilation, kh, kw, oh, ow)
        _split(_mm_rows, m * p, col, w2t, y[n0 * p : (n0 + m) * p])
    return y.reshape(n, oh, ow, f)


def _nhwc_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, stride: Pair, pad: Pad4, dilation: Pair, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """[dW2d | db] = sum over the chunks of dout2d.T @ [cols | 1]; dx = col2im_nhwc(dout2d @ W2d)."""
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    n, h, w, c = x.shape
    f, _, kh, kw = W.shape
    oh, ow = dout.shape[1:3]
    kk, p = kh * kw * c, oh * ow
    w2 = _nhwc_w2(W, x.dtype)
    d2 = dout.reshape(n * p, f)
    dwb = np.zeros((f, kk + 1), dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    step = _chunk(n, (2 * kk + 1) * p * x.itemsize if need_dx else (kk + 1) * p * x.itemsize)
    col = None
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if col is None or col.shape[0] != m * p:
            col = np.empty((m * p, kk + 1), dtype=x.dtype)
            col[:, kk] = 1
        _im2col_nhwc(m * oh, x, n0, col, *stride, pad[0], pad[2], *dilation, kh, kw, oh, ow)
        d_m = d2[n0 * p : (n0 + m) * p]
        for part in _split(_grad_rows, m * p, d_m, col):  # (F, rows) @ (rows, K + 1)
            dwb += part
        if need_dx:
            dcol = np.empty((m * p, kk), dtype=x.dtype)  # (rows, F) @ (F, K)
            _split(_mm_rows, m * p, d_m, w2, dcol)
            _col2im_nhwc(m, dcol, n0, dx, *stride, pad[0], pad[2], *dilation, kh, kw, oh, ow)
    # dW[f, c, i, j] = dW2d[f, (i*kw + j)*C + c]
    dW = np.ascontiguousarray(dwb[:, :kk].reshape(f, kh, kw, c).transpose(0, 3, 1, 2))
    return dx, dW, np.ascontiguousarray(dwb[:, kk])


def _nhwc_dx(
    dout: np.ndarray, W: np.ndarray, x_shape: tuple[int, ...], stride: Pair, pad: Pad4, dilation: Pair
) -> np.ndarray:
    """dx = col2im_nhwc(dout2d @ W2d) per chunk of images (conv2d_backward_data, NHWC)."""
    n, h, w, c = x_shape
    f, _, kh, kw = W.shape
    oh, ow = dout.shape[1:3]
    kk, p = kh * kw * c, oh * ow
    w2 = _nhwc_w2(W, dout.dtype)
    d2 = dout.reshape(n * p, f)
    dx = np.empty(x_shape, dtype=dout.dtype)
    step = _chunk(n, kk * p * dout.itemsize)
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        dcol = np.empty((m * p, kk), dtype=dout.dtype)
        _split(_mm_rows, m * p, d2[n0 * p : (n0 + m) * p], w2, dcol)
        _col2im_nhwc(m, dcol, n0, dx, *stride, pad[0], pad[2], *dilation, kh, kw, oh, ow)
    return dx


# ----------------------------------------------------------------------------------------------
# groups > 1 by GEMM: one groups == 1 convolution per group on its channel slice
# ----------------------------------------------------------------------------------------------


def _channels(a: np.ndarray, lo: int, hi: int, layout: str) -> np.ndarray:
    """Channels lo..hi-1 of a, as a contiguous copy."""
    return np.ascontiguousarray(a[..., lo:hi] if layout == "NHWC" else a[:, lo:hi])


def _put_channels(dst: np.ndarray, lo: int, hi: int, layout: str, src: np.ndarray) -> None:
    if layout == "NHWC":
        dst[..., lo:hi] = src
    else:
        dst[:, lo:hi] = src


def _per_group_forward(x, W, b, stride, pad, dilation, groups, layout):  # type: ignore[no-untyped-def]
    """y[:, group g's filters] = the groups == 1 GEMM convolution of x's group-g channels."""
    x = np.ascontiguousarray(x)
    f, cg = W.shape[:2]
    fg = f // groups
    y = None
    for g in range(groups):
        bg = None if b is None else b[g * fg : (g + 1) * fg]
        xg = _channels(x, g * cg, (g + 1) * cg, layout)
        yg = conv2d_forward(xg, W[g * fg : (g + 1) * fg], bg, stride, pad, dilation, 1, layout)
        if y is None:
            shape = yg.shape[:3] + (f,) if layout == "NHWC" else (yg.shape[0], f) + yg.shape[2:]
            y = np.empty(shape, dtype=x.dtype)
        _put_channels(y, g * fg, (g + 1) * fg, layout, yg)
    return y


def _per_group_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx):  # type: ignore[no-untyped-def]
    x = np.ascontiguousarray(x)
    f, cg = W.shape[:2]
    fg = f // groups
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    dW = np.empty(W.shape, dtype=x.dtype)
    db = np.empty(f, dtype=x.dtype)
    for g in range(groups):
        dg, xg = _channels(dout, g * fg, (g + 1) * fg, layout), _channels(x, g * cg, (g + 1) * cg, layout)
        dxg, dW[g * fg : (g + 1) * fg], db[g * fg : (g + 1) * fg] = conv2d_backward(
            dg, xg, W[g * fg : (g + 1) * fg], stride, pad, dilation, 1, layout, need_dx
        )
        if need_dx:
            _put_channels(dx, g * cg, (g + 1) * cg, layout, dxg)
    return dx, dW, db


def _per_group_dx(dout, W, x_shape, stride, pad, dilation, groups, layout):  # type: ignore[no-untyped-def]
    f, cg = W.shape[:2]
    fg = f // groups
    dx = np.empty(x_shape, dtype=dout.dtype)
    sub = (*x_shape[:3], cg) if layout == "NHWC" else (x_shape[0], cg, *x_shape[2:])
    for g in range(groups):
        dg = _channels(dout, g * fg, (g + 1) * fg, layout)
        dxg = conv2d_backward_data(dg, W[g * fg : (g + 1) * fg], sub, stride, pad, dilation, 1, layout)
        _put_channels(dx, g * cg, (g + 1) * cg, layout, dxg)
    return dx
