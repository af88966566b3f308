"""The NumPy backend's convolution kernels: vectorised im2col/col2im and the grouped GEMM convolution.

Every loop here runs over kernel taps (kh*kw iterations), never over pixels or groups; the work inside
each iteration is a whole-array NumPy operation. Both layouts run the same code, in (N, C, H, W) order:
an "NHWC" input is read into that order by the copy a kernel makes anyway (the padded copy of x, the
GEMM's operand) and a result is written out in "NHWC" by its final copy. Window views straight over
NHWC memory work too, but then the column copies and the col2im sums stride across memory, which
made the backward several times slower than these two transposing copies.
The max- and average-pool kernels are in :mod:`.pooling`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from fastconv._shapes import Pad4, Pair, conv_output_size, to_nchw
from fastconv.backends.numpy import winograd
from fastconv.backends.numpy.algorithms import NAMES, algorithm_support

Shape4 = tuple[int, int, int, int]


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """The (N, C, H, W)-ordered view of a 4-D array stored in ``layout`` (no copy)."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An (N, C, H, W) array the kernel made, as a contiguous array stored in ``layout``
    (``a`` itself when it is already that)."""
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def _padded(x: np.ndarray, pad: Pad4, layout: str, value: float = 0.0) -> np.ndarray:
    """x (stored in ``layout``) as a contiguous (N, C, H + top + bottom, W + left + right) array with
    pad = (top, bottom, left, right) rows/columns of ``value`` around it; x itself when it is NCHW
    and unpadded."""
    xn = _nchw(x, layout)
    top, bottom, left, right = pad
    if top == bottom == left == right == 0:
        return np.ascontiguousarray(xn)
    return np.pad(xn, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value)


def _windows(xpad: np.ndarray, kh: int, kw: int, out_hw: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """Read-only view (N, C, kh, kw, OH, OW) of an (N, C, Hp, Wp) array xpad:
    view[n, c, i, j, oh, ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw].

    Every column layout below is a transpose of this view, copied once.
    """
    n, c = xpad.shape[:2]
    s_n, s_c, s_h, s_w = xpad.strides
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return as_strided(
        xpad,
        shape=(n, c, kh, kw, oh, ow),
        strides=(s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw),
        writeable=False,
    )


def _tap_slices(i: int, j: int, out_hw: Pair, stride: Pair, dilation: Pair) -> tuple[slice, slice]:
    """Rows/cols of the padded input read by tap (i, j): i*dh + oh*sh for oh in [0, OH)."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def _fold_taps(taps: np.ndarray, out: np.ndarray, stride: Pair, dilation: Pair) -> None:
    """Add taps (A, B, kh, kw, OH, OW) into the padded out (A, B, Hp, Wp), in place:
    out[a, b, oh*sh + i*dh, ow*sw + j*dw] += taps[a, b, i, j, oh, ow].

    The adjoint of a window view, as a loop over the kh*kw taps; shared by every col2im below and
    the pooling backwards. ``out`` may be a transposed view: the sums land in its base array.
    """
    kh, kw, oh, ow = taps.shape[2:]
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap_slices(i, j, (oh, ow), stride, dilation)
            out[:, :, rows, cols] += taps[:, :, i, j]


def _zeros_padded(n: int, c: int, hw: Pair, pad: Pad4, dtype: np.dtype) -> np.ndarray:
    """Zeros (N, C, H + top + bottom, W + left + right): a padded dx the folds sum into."""
    top, bottom, left, right = pad
    return np.zeros((n, c, hw[0] + top + bottom, hw[1] + left + right), dtype=dtype)


def _crop(xpad: np.ndarray, hw: Pair, pad: Pad4, layout: str) -> np.ndarray:
    """The (H, W) interior of a padded (N, C, Hp, Wp) array the kernel made, stored in ``layout``."""
    top, _, left, _ = pad
    return _in_layout(xpad[:, :, top : top + hw[0], left : left + hw[1]], layout)


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw), one copy out of a strided view.

    col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    """
    out_hw = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    view = _windows(_padded(x, pad, "NCHW"), kh, kw, out_hw, stride, dilation).transpose(0, 4, 5, 1, 2, 3)
    n, c = x.shape[:2]
    # a fresh array even where the view is already contiguous (1x1 kernels, window = input)
    return np.require(view, requirements=["C", "O"]).reshape(n * out_hw[0] * out_hw[1], c * kh * kw)


def col2im(
    col: np.ndarray,
    x_shape: Shape4,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), summing every column entry that read each pixel."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    # taps[n, c, i, j, oh, ow] = col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j]
    taps = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    dxpad = _zeros_padded(n, c, (h, w), pad, col.dtype)
    _fold_taps(taps, dxpad, stride, dilation)
    return _crop(dxpad, (h, w), pad, "NCHW")


def _columns(
    x: np.ndarray, kh: int, kw: int, out_hw: Pair, stride: Pair, pad: Pad4, dilation: Pair, layout: str
) -> np.ndarray:
    """x (in ``layout``) -> cols: (C*kh*kw, N*OH*OW), so each conv GEMM is a single large BLAS call.

    cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]; channel-major
    rows, so the rows of group g are the contiguous block [g*Cg*kh*kw, (g + 1)*Cg*kh*kw).
    """
    n, c = to_nchw(x.shape, layout)[:2]
    oh, ow = out_hw
    view = _windows(_padded(x, pad, layout), kh, kw, out_hw, stride, dilation).transpose(1, 2, 3, 0, 4, 5)
    return np.ascontiguousarray(view).reshape(c * kh * kw, n * oh * ow)


def _columns_to_image(
    cols: np.ndarray,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> np.ndarray:
    """cols: (C*kh*kw, N*OH*OW) -> dx of x_shape (in ``layout``), the adjoint of :func:`_columns`."""
    n, c, h, w = to_nchw(x_shape, layout)
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    # taps[c, n, i, j, oh, ow] = cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow]; folded channel-major, like cols
    taps = cols.reshape(c, kh, kw, n, oh, ow).transpose(0, 3, 1, 2, 4, 5)
    dxpad = _zeros_padded(n, c, (h, w), pad, cols.dtype)
    _fold_taps(taps, dxpad.transpose(1, 0, 2, 3), stride, dilation)
    return _crop(dxpad, (h, w), pad, layout)


def _from_groups(y: np.ndarray, n: int, out_hw: Pair, layout: str) -> np.ndarray:
    """(G, Fg, N*OH*OW) GEMM result -> a fresh (N, F, OH, OW) or (N, OH, OW, F) array."""
    f = y.shape[0] * y.shape[1]
    y4 = y.reshape(f, n, *out_hw)  # y4[g*Fg + fg, n, oh, ow] = y[g, fg, (n*OH + oh)*OW + ow]
    return _in_layout(y4.transpose(1, 0, 2, 3), layout)


def _to_groups(dout: np.ndarray, groups: int, layout: str) -> np.ndarray:
    """dout (in ``layout``) -> D: (G, Fg, N*OH*OW), D[g, fg, (n*OH + oh)*OW + ow] = dout[n, g*Fg + fg, oh, ow]."""
    n, f, oh, ow = to_nchw(dout.shape, layout)
    return np.ascontiguousarray(_nchw(dout, layout).transpose(1, 0, 2, 3)).reshape(
        groups, f // groups, n * oh * ow
    )


def _check_algorithm(algorithm: str, direction: str, x_shape, W_shape, stride, pad, dilation, groups, layout):
    """ValueError for an unknown algorithm or one that cannot run this convolution (the caller checks
    first; this keeps a direct call from computing garbage)."""
    if algorithm not in NAMES:
        raise ValueError(f"unknown algorithm {algorithm!r}: the NumPy backend runs {', '.join(NAMES)}")
    reason = algorithm_support(algorithm, direction, x_shape, W_shape, stride, pad, dilation, groups, layout)
    if reason is not None:
        raise ValueError(reason)


def conv2d_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
    *,
    algorithm: str = "gemm",
) -> np.ndarray:
    """x: (N, C, H, W) or (N, H, W, C), W: (F, C // groups, kh, kw), b: (F,) or None
    -> y: (N, F, OH, OW) or (N, OH, OW, F).

    "gemm": one batched GEMM over the groups, (G, Fg, Cg*kh*kw) @ (G, Cg*kh*kw, N*OH*OW);
    "winograd"/"winograd2", "direct": :mod:`.winograd`, :mod:`.direct`.
    """
    if algorithm != "gemm":
        _check_algorithm(algorithm, "forward", x.shape, W.shape, stride, pad, dilation, groups, layout)
    if algorithm in winograd.TILE:
        return winograd.forward(x, W, b, pad, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        from fastconv.backends.numpy import direct  # here: direct.py uses this module

        return direct.forward(x, W, b, stride, pad, dilation, groups, layout)
    n, _, h, w = to_nchw(x.shape, layout)
    f, _, kh, kw = W.shape
    out_hw = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    cols = _columns(x, kh, kw, out_hw, stride, pad, dilation, layout)
    # y[g, fg, p] = sum_k W[g*Fg + fg, k] * cols[g*K + k, p], K = Cg*kh*kw
    y = W.reshape(groups, f // groups, -1) @ cols.reshape(groups, -1, cols.shape[1])
    if b is not None:
        y += b.reshape(groups, f // groups, 1)
    return _from_groups(y, n, out_hw, layout)


def conv2d_backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
    need_dx: bool = True,
    *,
    algorithm: str = "gemm",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout in y's layout -> dx (x's shape) or None, dW (F, C // groups, kh, kw), db (F,).

    "gemm": with D = dout as (G, Fg, N*OH*OW) and cols as (G, K, N*OH*OW), dW = (cols @ D^T)^T and
    dcols = W^T @ D per group (batched), folded back by col2im. "winograd"/"winograd2": :mod:`.winograd`;
    "direct": dx by :func:`.direct.backward_dx` (no col2im), dW and db as "gemm".
    """
    if algorithm != "gemm":
        _check_algorithm(algorithm, "backward", x.shape, W.shape, stride, pad, dilation, groups, layout)
    if algorithm in winograd.TILE:
        return winograd.backward(dout, x, W, pad, need_dx=need_dx, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        from fastconv.backends.numpy import direct

        _, dW, db = conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx=False)
        dx = direct.backward_dx(dout, W, x.shape, stride, pad, dilation, groups, layout) if need_dx else None
        return dx, dW, db
    f, _, kh, kw = W.shape
    d3 = _to_groups(dout, groups, layout)
    db = d3.sum(axis=2).reshape(f)
    out_hw = to_nchw(dout.shape, layout)[2:]
    cols = _columns(x, kh, kw, out_hw, stride, pad, dilation, layout)
    cols = cols.reshape(groups, -1, cols.shape[1])
    # dW[g*Fg + fg, k] = sum_p D[g, fg, p] * cols[g, k, p]; OpenBLAS runs this operand order faster
    # than D @ cols^T
    dW = np.ascontiguousarray((cols @ d3.transpose(0, 2, 1)).transpose(0, 2, 1)).reshape(W.shape)
    dx = None
    if need_dx:
        del cols  # free the columns before the same-sized dcols is made
        dx = _backward_data(d3, W, x.shape, stride, pad, dilation, groups, layout)
    return dx, dW, db


def _backward_data(
    d3: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """dx from D (G, Fg, N*OH*OW): dcols[g, k, p] = sum_fg W[g*Fg + fg, k] * D[g, fg, p], folded by col2im."""
    f, _, kh, kw = W.shape
    dcols = W.reshape(groups, f // groups, -1).transpose(0, 2, 1) @ d3  # (G, Cg*kh*kw, N*OH*OW)
    return _columns_to_image(dcols.reshape(-1, d3.shape[2]), x_shape, kh, kw, stride, pad, dilation, layout)


def conv2d_backward_data(
    dout: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """dout (N, F, OH, OW) or (N, OH, OW, F), W (F, C // groups, kh, kw) -> dx of x_shape (in ``layout``'s
    order): the adjoint of conv2d_forward in x, without x (the forward of conv_transpose2d)."""
    return _backward_data(_to_groups(dout, groups, layout), W, x_shape, stride, pad, dilation, groups, layout)
