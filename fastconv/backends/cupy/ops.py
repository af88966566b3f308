"""The cupy backend's convolution kernels: CUDA im2col/col2im, cuBLAS GEMMs, direct depthwise kernels.

Contract v2 (see :mod:`fastconv.backends`): ``pad`` is (top, bottom, left, right); ``layout`` is
"NCHW" or "NHWC"; W is (F, C // groups, kh, kw) in both layouts.

* Grouped convolutions run as one batched ``cupy.matmul`` over the groups (cuBLAS strided batched
  GEMM). The columns are built straight in a per-group layout, so no group is ever copied out of x:
  NCHW uses the k-major columns (C*kh*kw, N*OH*OW), whose rows for group g are one contiguous block;
  NHWC uses columns (G, N*OH*OW, kh*kw*Cg), whose GEMM output (N*OH*OW, Fg) per group is already the
  NHWC y. When the columns of all groups would exceed :data:`COL_BUDGET_BYTES`, the groups run in
  chunks (the kernels take a channel / group window), bounding the extra memory.
* Depthwise convolutions (Cg == 1; a GEMM per group would reduce over only kh*kw) run as direct CUDA
  kernels: forward and dx one thread per output element, dW as per-chunk partial sums added in a
  fixed order.

Every kernel is a gather or a fixed-order reduction, so results are deterministic run to run.
CuPy, the launcher and the input check are reached through :mod:`~fastconv.backends.cupy.runtime`
(``_rt.cupy``, ``_rt.launch``, ``_rt.require``), which the CPU tests swap for NumPy and the g++
build of the same kernels.
"""

from __future__ import annotations

from typing import Any

from fastconv._shapes import Pair, conv_output_size
from fastconv.backends.cupy import kernels as _cu
from fastconv.backends.cupy import runtime as _rt
from fastconv.backends.cupy.kernels import Pad4

#: Most bytes of im2col columns one convolution call holds at once (beyond x, W, y). Grouped
#: convolutions over it run a few groups at a time; a single group's columns are never split.
COL_BUDGET_BYTES = 1 << 30

ALGORITHMS = ("gemm",)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _check(pad: Pad4, layout: str, algorithm: str = "gemm") -> None:
    if len(pad) != 4:
        raise ValueError(f"pad must be (top, bottom, left, right), got {pad!r}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"the cupy backend runs algorithm 'gemm' only (cuBLAS GEMMs, direct kernels for depthwise), "
            f"got {algorithm!r}"
        )


def _group_chunks(groups: int, bytes_per_group: int) -> list[tuple[int, int]]:
    """(first group, group count) pieces whose columns fit COL_BUDGET_BYTES (at least one group each)."""
    per = max(1, COL_BUDGET_BYTES // max(bytes_per_group, 1))
    return [(g0, min(per, groups - g0)) for g0 in range(0, groups, per)]


def _is_depthwise(c: int, cg: int, groups: int) -> bool:
    return cg == 1 and groups == c


def _im2col(
    x: Any,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    k_major: bool,
    c0: int = 0,
    channels: int | None = None,
) -> Any:
    launch = _cu.im2col_args(tuple(x.shape), kh, kw, stride, pad, dilation, k_major, c0, channels)
    col = _rt.cupy.empty(launch.out_shape, dtype=x.dtype)
    _rt.launch("fc_im2col", x.dtype, launch, (x, col))
    return col


def _col2im(
    col: Any,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    k_major: bool,
    c0: int = 0,
    channels: int | None = None,
    out: Any | None = None,
) -> Any:
    """dx (or the channel window c0 .. of ``out``) from the columns of those channels."""
    launch = _cu.col2im_args(tuple(x_shape), kh, kw, stride, pad, dilation, k_major, c0, channels)
    dx = _rt.cupy.empty(launch.out_shape, dtype=col.dtype) if out is None else out
    _rt.launch("fc_col2im", col.dtype, launch, (col, dx))
    return dx


def _im2col_nhwc(
    x: Any, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair, groups: int, g0: int, count: int
) -> Any:
    launch = _cu.im2col_nhwc_args(tuple(x.shape), kh, kw, stride, pad, dilation, groups, g0, count)
    col = _rt.cupy.empty(launch.out_shape, dtype=x.dtype)
    _rt.launch("fc_im2col_nhwc", x.dtype, launch, (x, col))
    return col


def _col2im_nhwc(
    col: Any,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    g0: int,
    count: int,
    out: Any,
) -> None:
    launch = _cu.col2im_nhwc_args(tuple(x_shape), kh, kw, stride, pad, dilation, groups, g0, count)
    _rt.launch("fc_col2im_nhwc", col.dtype, launch, (col, out))


def _nhwc_filters(W: Any, groups: int) -> Any:
    """W (F, Cg, kh, kw) as (G, kh*kw*Cg, Fg): the right operand of the NHWC GEMM, rows (i, j, c)."""
    f, cg, kh, kw = W.shape
    fg = f // groups
    wt = W.reshape(groups, fg, cg, kh, kw).transpose(0, 3, 4, 2, 1)
    return _rt.cupy.ascontiguousarray(wt).reshape(groups, kh * kw * cg, fg)


# ---------------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------------


def im2col(x: Any, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair) -> Any:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) (the book's layout), one CUDA kernel."""
    _check(pad, "NCHW")
    x = _rt.require(x, "x")
    return _im2col(x, kh, kw, stride, pad, dilation, k_major=False)


def col2im(
    col: Any, x_shape: tuple[int, ...], kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair
) -> Any:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), a deterministic gather (one thread per pixel)."""
    _check(pad, "NCHW")
    col = _rt.require(col, "col")
    return _col2im(col, tuple(x_shape), kh, kw, stride, pad, dilation, k_major=False)


def conv2d_forward(
    x: Any,
    W: Any,
    b: Any | None,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    algorithm: str = "gemm",
) -> Any:
    """x (layout order), W (F, C // groups, kh, kw), b (F,) or None -> y (N, F, OH, OW) in x's layout."""
    _check(pad, layout, algorithm)
    x, W = _rt.require(x, "x"), _rt.require(W, "W")
    b = None if b is None else _rt.require(b, "b")
    cp = _rt.cupy
    n, c, h, w = _cu._nchw(tuple(x.shape), layout)
    f, cg, kh, kw = W.shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    if _is_depthwise(c, cg, groups):
        launch = _cu.dw_fwd_args(tuple(x.shape), f, kh, kw, stride, pad, dilation, layout, b is not None)
        y = cp.empty(launch.out_shape, dtype=x.dtype)
        # without a bias the kernel never reads b: W stands in for the pointer
        _rt.launch("fc_dw_fwd", x.dtype, launch, (x, W, W if b is None else b, y))
        return y
    fg, kg, rows = f // groups, cg * kh * kw, n * oh * ow
    chunks = _group_chunks(groups, kg * rows * x.dtype.itemsize)
    if layout == "NCHW":
        # (G, Fg, Kg) @ (G, Kg, N*OH*OW) per chunk -> y_f (F, N*OH*OW), then one transpose (+ b) to NCHW
        Wg = W.reshape(groups, fg, kg)
        parts = []
        for g0, cnt in chunks:
            col = _im2col(x, kh, kw, stride, pad, dilation, True, g0 * cg, cnt * cg).reshape(cnt, kg, rows)
            parts.append(cp.matmul(Wg[g0 : g0 + cnt], col).reshape(cnt * fg, rows))
            del col  # free the columns before the next chunk's are allocated
        y_f = parts[0] if len(parts) == 1 else cp.concatenate(parts)
        y_nchw = y_f.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
        y = cp.empty((n, f, oh, ow), dtype=x.dtype)
        if b is None:
            y[...] = y_nchw
        else:
            cp.add(y_nchw, b.reshape(1, f, 1, 1), out=y)
        return y
    # NHWC: (G, N*OH*OW, Kg) @ (G, Kg, Fg) -> (G, N*OH*OW, Fg); with one group that is y itself
    Wt = _nhwc_filters(W, groups)
    if groups == 1:
        col = _im2col_nhwc(x, kh, kw, stride, pad, dilation, 1, 0, 1)
        y = cp.matmul(col[0], Wt[0]).reshape(n, oh, ow, f)
    else:
        y = cp.empty((n, oh, ow, f), dtype=x.dtype)
        y_groups = y.reshape(rows, groups, fg)
        for g0, cnt in chunks:
            col = _im2col_nhwc(x, kh, kw, stride, pad, dilation, groups, g0, cnt)
            y_groups[:, g0 : g0 + cnt, :] = cp.matmul(col, Wt[g0 : g0 + cnt]).transpose(1, 0, 2)
    if b is not None:
        y += b  # y is this call's own fresh array
    return y


def _depthwise_dx(
    dout: Any, W: Any, x_shape: tuple[int, ...], stride: Pair, pad: Pad4, dilation: Pair, layout: str
) -> Any:
    f, _, kh, kw = W.shape
    launch = _cu.dw_bwd_data_args(tuple(x_shape), f, kh, kw, stride, pad, dilation, layout)
    dx = _rt.cupy.empty(launch.out_shape, dtype=dout.dtype)
    _rt.launch("fc_dw_bwd_data", dout.dtype, launch, (dout, W, dx))
    return dx


def _depthwise_dW(
    dout: Any, x: Any, W_shape: tuple[int, ...], stride: Pair, pad: Pad4, dilation: Pair, layout: str
) -> Any:
    f, _, kh, kw = W_shape
    first, second = _cu.dw_bwd_filter_args(tuple(x.shape), f, kh, kw, stride, pad, dilation, layout)
    partial = _rt.cupy.empty(first.out_shape, dtype=x.dtype)
    _rt.launch("fc_dw_bwd_filter_partial", x.dtype, first, (x, dout, partial))
    dW = _rt.cupy.empty(second.out_shape, dtype=x.dtype)
    _rt.launch("fc_dw_bwd_filter_reduce", x.dtype, second, (partial, dW))
    return dW


def _gemm_dx(
    dout: Any,
    W: Any,
    x_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
    chunks: list[tuple[int, int]],
) -> Any:
    """dx = col2im(W^T @ dout) per group chunk; ``dout`` as :func:`_gemm_operand` gives it."""
    f, cg, kh, kw = W.shape
    fg = f // groups
    dx = _rt.cupy.empty(tuple(x_shape), dtype=dout.dtype)
    if layout == "NCHW":
        Wg = W.reshape(groups, fg, cg * kh * kw)
        for g0, cnt in chunks:
            s = slice(g0, g0 + cnt)
            dcol = _rt.cupy.matmul(Wg[s].transpose(0, 2, 1), dout[s])  # (cnt, Kg, N*OH*OW): k-major
            _col2im(dcol, x_shape, kh, kw, stride, pad, dilation, True, g0 * cg, cnt * cg, out=dx)
    else:
        Wt = _nhwc_filters(W, groups)
        for g0, cnt in chunks:
            s = slice(g0, g0 + cnt)
            dcol = _rt.cupy.matmul(dout[s], Wt[s].transpose(0, 2, 1))  # (cnt, N*OH*OW, Kg)
            _col2im_nhwc(dcol, x_shape, kh, kw, stride, pad, dilation, groups, g0, cnt, out=dx)
    return dx


def _gemm_operand(dout: Any, groups: int, layout: str) -> Any:
    """dout per group, as the GEMMs read it: (G, Fg, N*OH*OW) for NCHW, (G, N*OH*OW, Fg) for NHWC."""
    cp = _rt.cupy
    if layout == "NCHW":
        n, f, oh, ow = dout.shape
        d = cp.ascontiguousarray(dout.reshape(n, f, oh * ow).transpose(1, 0, 2))
        return d.reshape(groups, f // groups, n * oh * ow)
    n, oh, ow, f = dout.shape
    d = dout.reshape(n * oh * ow, groups, f // groups)
    return d.transpose(1, 0, 2) if groups == 1 else cp.ascontiguousarray(d.transpose(1, 0, 2))


def conv2d_backward(
    dout: Any,
    x: Any,
    W: Any,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
    need_dx: bool = True,
    *,
    algorithm: str = "gemm",
) -> tuple[Any | None, Any, Any]:
    """dout (y's layout) -> dx (x's layout) or None, dW (F, C // groups, kh, kw), db (F,).

    GEMM path: dW = dout @ col^T and dcol = W^T @ dout per group (batched), dx = col2im(dcol), a gather.
    """
    _check(pad, layout, algorithm)
    dout, x, W = _rt.require(dout, "dout"), _rt.require(x, "x"), _rt.require(W, "W")
    cp = _rt.cupy
    n, c, h, w = _cu._nchw(tuple(x.shape), layout)
    f, cg, kh, kw = W.shape
    db = dout.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))
    if _is_depthwise(c, cg, groups):
        dW = _depthwise_dW(dout, x, W.shape, stride, pad, dilation, layout)
        dx = _depthwise_dx(dout, W, tuple(x.shape), stride, pad, dilation, layout) if need_dx else None
        return dx, dW, db
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    fg, kg, rows = f // groups, cg * kh * kw, n * oh * ow
    chunks = _group_chunks(groups, kg * rows * x.dtype.itemsize)
    d = _gemm_operand(dout, groups, layout)
    dW = cp.empty(W.shape, dtype=W.dtype)
    for g0, cnt in chunks:
        s = slice(g0, g0 + cnt)
        if layout == "NCHW":
            col = _im2col(x, kh, kw, stride, pad, dilation, True, g0 * cg, cnt * cg).reshape(cnt, kg, rows)
            dW[g0 * fg : (g0 + cnt) * fg] = cp.matmul(d[s], col.transpose(0, 2, 1)).reshape(
                cnt * fg, cg, kh, kw
            )
        else:
            col = _im2col_nhwc(x, kh, kw, stride, pad, dilation, groups, g0, cnt)  # (cnt, rows, Kg)
            part = cp.matmul(d[s].transpose(0, 2, 1), col)  # (cnt, Fg, Kg), Kg in (i, j, c) order
            dW[g0 * fg : (g0 + cnt) * fg] = part.reshape(cnt * fg, kh, kw, cg).transpose(0, 3, 1, 2)
        del col  # free the columns before the next chunk (or dcol) is allocated
    dx = _gemm_dx(d, W, tuple(x.shape), stride, pad, dilation, groups, layout, chunks) if need_dx else None
    return dx, dW, db


def conv2d_backward_data(
    dout: Any,
    W: Any,
    x_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
) -> Any:
    """dx alone (x's shape ``x_shape``, in the layout's order): the adjoint of conv2d_forward in x."""
    _check(pad, layout)
    dout, W = _rt.require(dout, "dout"), _rt.require(W, "W")
    x_shape = tuple(int(v) for v in x_shape)
    n, c, h, w = _cu._nchw(x_shape, layout)
    f, cg, kh, kw = W.shape
    if _is_depthwise(c, cg, groups):
        return _depthwise_dx(dout, W, x_shape, stride, pad, dilation, layout)
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    chunks = _group_chunks(groups, cg * kh * kw * n * oh * ow * dout.dtype.itemsize)
    d = _gemm_operand(dout, groups, layout)
    return _gemm_dx(d, W, x_shape, stride, pad, dilation, groups, layout, chunks)
