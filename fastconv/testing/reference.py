"""Independent float64 references: direct loops and the classic (book) algorithm.

Nothing here imports fastconv; the tests and :func:`fastconv.testing.check_backend` compare every
backend against these, and tests/test_testing.py checks these against ``torch.nn.functional``.

Direct loops, with (h, w) pairs for stride and dilation and ``pad`` either an (h, w) pair
(symmetric) or a 4-tuple (top, bottom, left, right); ``layout`` "NCHW" or "NHWC" (weights are
(F, C // groups, kh, kw) in both; NHWC is computed as NCHW and transposed):

* :func:`conv2d`, :func:`conv2d_backward`, :func:`conv2d_backward_data` (with ``groups``);
* :func:`conv_transpose2d`, :func:`conv_transpose2d_backward` (PyTorch's transposed convolution,
  written as its own scatter loop, not through conv2d);
* :func:`im2col_direct`, :func:`col2im_direct`;
* :func:`max_pool2d`, :func:`max_pool2d_backward`, :func:`avg_pool2d`, :func:`avg_pool2d_backward`,
  :func:`global_avg_pool2d`, :func:`global_avg_pool2d_backward` (explicit ``out_hw`` for ceil mode;
  :func:`pool_out_size` is PyTorch's rule).

The book's algorithm (int stride and pad, no dilation): :func:`im2col`, :func:`col2im`,
:class:`BookConvolution`, :class:`BookPooling`.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("NCHW", "NHWC")


# ---------------------------------------------------------------------------------------------------
# Sizes, padding and layouts
# ---------------------------------------------------------------------------------------------------


def out_size(size: int, k: int, s: int, p: int, d: int, p_end: int | None = None) -> int:
    """Floor-mode output size; ``p`` pads the start and ``p_end`` (default ``p``) the end."""
    p_end = p if p_end is None else p_end
    return (size + p + p_end - d * (k - 1) - 1) // s + 1


def pool_out_size(
    size: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False, p_end: int | None = None
) -> int:
    """PyTorch's pooling output size: ceil mode rounds the window count up, but drops a last window
    that would start inside the end padding (it would hold no input element)."""
    p_end = p if p_end is None else p_end
    span = size + p + p_end - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pad4(pad) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an (h, w) pair, ((top, bottom), (left, right)) or a 4-tuple."""
    pad = tuple(pad)
    if len(pad) == 2 and all(np.ndim(p) == 1 for p in pad):
        pad = (*pad[0], *pad[1])
    if len(pad) == 2:
        return int(pad[0]), int(pad[0]), int(pad[1]), int(pad[1])
    if len(pad) == 4:
        return int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3])
    raise ValueError(f"pad must be (h, w), ((top, bottom), (left, right)) or a 4-tuple, got {pad!r}")


def to_nchw(a, layout: str = "NCHW") -> np.ndarray:
    """``a`` in float64, NCHW order (a view of an NHWC array transposed)."""
    a = np.asarray(a, np.float64)
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def from_nchw(a: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """An NCHW result in the order of ``layout``, C-contiguous."""
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw_shape(shape, layout: str = "NCHW") -> tuple[int, int, int, int]:
    """(N, C, H, W) of a shape given in the order of ``layout``."""
    n, a, b, c = (int(v) for v in shape)
    return (n, a, b, c) if layout == "NCHW" else (n, c, a, b)


def _padded(x: np.ndarray, pad, value: float) -> np.ndarray:
    """x (N, C, H, W) in float64 inside a border of ``value``, pad = (top, bottom, left, right)."""
    top, bottom, left, right = pad
    n, c, h, w = x.shape
    xpad = np.full((n, c, h + top + bottom, w + left + right), value, dtype=np.float64)
    xpad[:, :, top : top + h, left : left + w] = x
    return xpad


def _grouped(a: np.ndarray, groups: int, axis: int = 1) -> np.ndarray:
    """Split the channel axis of ``a`` into (groups, channels per group)."""
    return a.reshape(*a.shape[:axis], groups, a.shape[axis] // groups, *a.shape[axis + 1 :])


def _check_groups(c: int, f: int, cg: int, groups: int) -> None:
    if groups < 1 or c % groups or f % groups or cg != c // groups:
        raise ValueError(f"groups {groups} does not fit C={c}, F={f}, W's second dim {cg}")


# ---------------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------------


def conv2d(x, W, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, layout="NCHW"):
    """Direct loop over output positions and taps, per group g = f // Fg:
    y[n,f,oh,ow] = b[f] + sum_{c<Cg,i,j} W[f,c,i,j] * xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]."""
    x = to_nchw(x, layout)
    W = np.asarray(W, np.float64)
    n, c, h, w = x.shape
    f, cg, kh, kw = W.shape
    _check_groups(c, f, cg, groups)
    (sh, sw), (dh, dw), p = stride, dilation, pad4(pad)
    oh, ow = out_size(h, kh, sh, p[0], dh, p[1]), out_size(w, kw, sw, p[2], dw, p[3])
    xg = _grouped(_padded(x, p, 0.0), groups)  # (n, G, Cg, Hp, Wp)
    Wg = _grouped(W, groups, axis=0)  # (G, Fg, Cg, kh, kw)
    y = np.zeros((n, groups, f // groups, oh, ow))
    for a in range(oh):
        for bb in range(ow):
            for i in range(kh):
                for j in range(kw):
                    patch = xg[:, :, :, a * sh + i * dh, bb * sw + j * dw]  # (n, G, Cg)
                    y[:, :, :, a, bb] += np.einsum("ngc,gfc->ngf", patch, Wg[:, :, :, i, j])
    y = y.reshape(n, f, oh, ow)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, f, 1, 1)
    return from_nchw(y, layout)


def conv2d_backward(dout, x, W, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, layout="NCHW"):
    """Direct loops for dx, dW, db, the adjoints of :func:`conv2d` (dout and dx in ``layout``)."""
    dout = to_nchw(dout, layout)
    x = to_nchw(x, layout)
    W = np.asarray(W, np.float64)
    n, c, h, w = x.shape
    f, cg, kh, kw = W.shape
    _check_groups(c, f, cg, groups)
    (sh, sw), (dh, dw), p = stride, dilation, pad4(pad)
    oh, ow = dout.shape[2:]
    xg = _grouped(_padded(x, p, 0.0), groups)  # (n, G, Cg, Hp, Wp)
    Wg = _grouped(W, groups, axis=0)  # (G, Fg, Cg, kh, kw)
    gout = _grouped(dout, groups)  # (n, G, Fg, OH, OW)
    dxg = np.zeros_like(xg)
    dWg = np.zeros_like(Wg)
    for a in range(oh):
        for bb in range(ow):
            g = gout[:, :, :, a, bb]  # (n, G, Fg)
            for i in range(kh):
                for j in range(kw):
                    r, q = a * sh + i * dh, bb * sw + j * dw
                    dWg[:, :, :, i, j] += np.einsum("ngf,ngc->gfc", g, xg[:, :, :, r, q])
                    dxg[:, :, :, r, q] += np.einsum("ngf,gfc->ngc", g, Wg[:, :, :, i, j])
    dx = dxg.reshape(n, c, *dxg.shape[3:])[:, :, p[0] : p[0] + h, p[2] : p[2] + w]
    return from_nchw(dx, layout), dWg.reshape(W.shape), dout.sum(axis=(0, 2, 3))


def conv2d_backward_data(
    dout, W, x_shape, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, layout="NCHW"
):
    """dx of :func:`conv2d_backward` without x (x_shape in the order of ``layout``)."""
    x = np.zeros(x_shape)  # dx does not depend on x
    return conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout)[0]


def conv_transpose2d_output_size(size, k, s, p, p_end, output_padding, d):
    """PyTorch's: (size - 1)*s - p - p_end + d*(k - 1) + output_padding + 1."""
    return (size - 1) * s - p - p_end + d * (k - 1) + output_padding + 1


def _transpose_geometry(x_nchw, W, stride, pad, output_padding, dilation, groups):
    n, cin, h, w = x_nchw.shape
    cin_w, cog, kh, kw = W.shape
    if cin_w != cin or groups < 1 or cin % groups:
        raise ValueError(
            f"W {W.shape} (C_in, C_out // groups, kh, kw) does not fit C_in={cin}, groups {groups}"
        )
    (sh, sw), (dh, dw), p = stride, dilation, pad4(pad)
    oph, opw = (output_padding, output_padding) if np.ndim(output_padding) == 0 else output_padding
    oh = conv_transpose2d_output_size(h, kh, sh, p[0], p[1], oph, dh)
    ow = conv_transpose2d_output_size(w, kw, sw, p[2], p[3], opw, dw)
    # The scatter buffer: every tap's target, and the output rows/cols past it (output padding).
    full = (
        max((h - 1) * sh + dh * (kh - 1) + 1, p[0] + oh),
        max((w - 1) * sw + dw * (kw - 1) + 1, p[2] + ow),
    )
    return (n, cin, h, w), (cog, kh, kw), (sh, sw, dh, dw), p, (oh, ow), full


def conv_transpose2d(
    x, W, b, stride=(1, 1), pad=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1, layout="NCHW"
):
    """PyTorch's conv_transpose2d as a direct scatter: W (C_in, C_out // groups, kh, kw),
    yfull[n, g*Cog + o, ih*sh + i*dh, iw*sw + j*dw] += x[n, g*Cig + c, ih, iw] * W[g*Cig + c, o, i, j],
    then y = yfull[top : top + OH, left : left + OW] (rows past the scatter, from output_padding, are 0)."""
    x = to_nchw(x, layout)
    W = np.asarray(W, np.float64)
    (n, cin, h, w), (cog, kh, kw), (sh, sw, dh, dw), p, (oh, ow), full = _transpose_geometry(
        x, W, stride, pad, output_padding, dilation, groups
    )
    xg = _grouped(x, groups)  # (n, G, Cig, H, W)
    Wg = _grouped(W, groups, axis=0)  # (G, Cig, Cog, kh, kw)
    yfull = np.zeros((n, groups, cog, *full))
    for ih in range(h):
        for iw in range(w):
            for i in range(kh):
                for j in range(kw):
                    contrib = np.einsum("ngc,gco->ngo", xg[:, :, :, ih, iw], Wg[:, :, :, i, j])
                    yfull[:, :, :, ih * sh + i * dh, iw * sw + j * dw] += contrib
    y = yfull.reshape(n, groups * cog, *full)[:, :, p[0] : p[0] + oh, p[2] : p[2] + ow].copy()
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return from_nchw(y, layout)


def conv_transpose2d_backward(
    dout, x, W, stride=(1, 1), pad=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1, layout="NCHW"
):
    """(dx, dW, db) of :func:`conv_transpose2d`: the same loop gathering where the forward scattered."""
    dout = to_nchw(dout, layout)
    x = to_nchw(x, layout)
    W = np.asarray(W, np.float64)
    (n, cin, h, w), (cog, kh, kw), (sh, sw, dh, dw), p, (oh, ow), full = _transpose_geometry(
        x, W, stride, pad, output_padding, dilation, groups
    )
    dfull = np.zeros((n, groups * cog, *full))
    dfull[:, :, p[0] : p[0] + oh, p[2] : p[2] + ow] = dout
    gfull = _grouped(dfull, groups)  # (n, G, Cog, Hf, Wf)
    xg = _grouped(x, groups)  # (n, G, Cig, H, W)
    Wg = _grouped(W, groups, axis=0)  # (G, Cig, Cog, kh, kw)
    dxg = np.zeros_like(xg)
    dWg = np.zeros_like(Wg)
    for ih in range(h):
        for iw in range(w):
            for i in range(kh):
                for j in range(kw):
                    g = gfull[:, :, :, ih * sh + i * dh, iw * sw + j * dw]  # (n, G, Cog)
                    dxg[:, :, :, ih, iw] += np.einsum("ngo,gco->ngc", g, Wg[:, :, :, i, j])
                    dWg[:, :, :, i, j] += np.einsum("ngc,ngo->gco", xg[:, :, :, ih, iw], g)
    return from_nchw(dxg.reshape(x.shape), layout), dWg.reshape(W.shape), dout.sum(axis=(0, 2, 3))


def im2col_direct(
    x: np.ndarray,
    kh: int,
    kw: int,
    stride: tuple[int, int] = (1, 1),
    pad=(0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) in float64, by a direct loop over output positions and taps.

    col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw] (zero padding);
    the contract's formula, with (h, w) pairs for stride and dilation, pad a pair or a 4-tuple.
    """
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (sh, sw), (dh, dw), p = stride, dilation, pad4(pad)
    oh, ow = out_size(h, kh, sh, p[0], dh, p[1]), out_size(w, kw, sw, p[2], dw, p[3])
    xpad = _padded(x, p, 0.0)
    col = np.zeros((n, oh, ow, c, kh, kw))
    for a in range(oh):
        for bb in range(ow):
            for i in range(kh):
                for j in range(kw):
                    col[:, a, bb, :, i, j] = xpad[:, :, a * sh + i * dh, bb * sw + j * dw]
    return col.reshape(n * oh * ow, c * kh * kw)


def col2im_direct(
    col: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: tuple[int, int] = (1, 1),
    pad=(0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W) in float64, the adjoint of :func:`im2col_direct`.

    A direct loop over output positions and taps adding each column entry into the pixel it read;
    entries that read padding are dropped.
    """
    n, c, h, w = x_shape
    (sh, sw), (dh, dw), p = stride, dilation, pad4(pad)
    oh, ow = out_size(h, kh, sh, p[0], dh, p[1]), out_size(w, kw, sw, p[2], dw, p[3])
    col = np.asarray(col, np.float64).reshape(n, oh, ow, c, kh, kw)
    dxp = np.zeros((n, c, h + p[0] + p[1], w + p[2] + p[3]))
    for a in range(oh):
        for bb in range(ow):
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, a * sh + i * dh, bb * sw + j * dw] += col[:, a, bb, :, i, j]
    return dxp[:, :, p[0] : p[0] + h, p[2] : p[2] + w]


# ---------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------


def _pool_geometry(shape_nchw, k, stride, pad, dilation, out_hw):
    """(kh, kw), (sh, sw), (dh, dw), pad 4-tuple, (OH, OW): floor mode unless ``out_hw`` is given."""
    h, w = shape_nchw[2:]
    (kh, kw), (sh, sw), (dh, dw), p = k, stride, dilation, pad4(pad)
    if out_hw is None:
        out_hw = (out_size(h, kh, sh, p[0], dh, p[1]), out_size(w, kw, sw, p[2], dw, p[3]))
    return (kh, kw), (sh, sw), (dh, dw), p, tuple(out_hw)


def _window_rows(o: int, s: int, start_pad: int, k: int, d: int) -> list[int]:
    """Input rows (or cols) of window ``o``: o*s - start_pad + i*d, i < k (some may lie outside)."""
    return [o * s - start_pad + i * d for i in range(k)]


def max_pool2d(x, k=(2, 2), stride=(2, 2), pad=(0, 0), dilation=(1, 1), out_hw=None, layout="NCHW"):
    """Direct loop over windows; window (oh, ow) reads rows oh*sh - top + i*dh (cols likewise),
    positions outside the input are skipped (PyTorch's -inf padding that argmax never names).
    argmax is the tap index i*kw + j of numpy.argmax over the window's input elements in row-major
    order (the first maximum, NaN the maximum). ``out_hw`` (OH, OW) defaults to floor mode."""
    x = to_nchw(x, layout)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), p, (oh, ow) = _pool_geometry(x.shape, k, stride, pad, dilation, out_hw)
    y = np.empty((n, c, oh, ow))
    arg = np.empty((n, c, oh, ow), np.int64)
    for a in range(oh):
        for bb in range(ow):
            taps, values = [], []  # the window's input elements, in row-major tap order
            for i, r in enumerate(_window_rows(a, sh, p[0], kh, dh)):
                for j, q in enumerate(_window_rows(bb, sw, p[2], kw, dw)):
                    if 0 <= r < h and 0 <= q < w:
                        taps.append(i * kw + j)
                        values.append(x[:, :, r, q])
            if not taps:  # the caller never asks for a window without input; -inf, as if all padding
                y[:, :, a, bb], arg[:, :, a, bb] = -np.inf, 0
                continue
            inside = np.stack(values, axis=-1)  # (n, c, taps)
            first = inside.argmax(axis=-1)
            arg[:, :, a, bb] = np.asarray(taps)[first]
            y[:, :, a, bb] = np.take_along_axis(inside, first[..., None], -1)[..., 0]
    return from_nchw(y, layout), from_nchw(arg, layout)


def max_pool2d_backward(
    dout, arg, shape, k=(2, 2), stride=(2, 2), pad=(0, 0), dilation=(1, 1), layout="NCHW"
):
    """dx (``shape``, in the order of ``layout``): each window's dout goes to the element its argmax
    names, i, j = divmod(argmax, kw); an argmax naming padding is dropped."""
    dout, arg = to_nchw(dout, layout), to_nchw(arg, layout).astype(np.int64)
    n, c, h, w = nchw_shape(shape, layout)
    (_, kw), (sh, sw), (dh, dw), p = k, stride, dilation, pad4(pad)
    dx = np.zeros((n, c, h, w))
    for nn in range(n):
        for cc in range(c):
            for a in range(dout.shape[2]):
                for bb in range(dout.shape[3]):
                    i, j = divmod(int(arg[nn, cc, a, bb]), kw)
                    r, q = a * sh - p[0] + i * dh, bb * sw - p[2] + j * dw
                    if 0 <= r < h and 0 <= q < w:
                        dx[nn, cc, r, q] += dout[nn, cc, a, bb]
    return from_nchw(dx, layout)


def _avg_window(o: int, s: int, start_pad: int, end_pad: int, k: int, size: int) -> tuple[int, int, int]:
    """PyTorch's window of output ``o`` on one axis: (start, end, length counting padding); the part
    of a ceil-mode window past the end padding is never counted."""
    start = o * s - start_pad
    end = min(start + k, size + end_pad)
    with_pad = end - start
    return max(start, 0), min(end, size), with_pad


def avg_pool2d(x, k=(2, 2), stride=(2, 2), pad=(0, 0), out_hw=None, count_include_pad=True, layout="NCHW"):
    """Direct loop over windows: y = sum of x over the window's input rows/cols / divisor, the divisor
    being the window size counting padding (count_include_pad) or the number of input elements."""
    x = to_nchw(x, layout)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), _, p, (oh, ow) = _pool_geometry(x.shape, k, stride, pad, (1, 1), out_hw)
    y = np.empty((n, c, oh, ow))
    for a in range(oh):
        h0, h1, ph = _avg_window(a, sh, p[0], p[1], kh, h)
        for bb in range(ow):
            w0, w1, pw = _avg_window(bb, sw, p[2], p[3], kw, w)
            divisor = ph * pw if count_include_pad else (h1 - h0) * (w1 - w0)
            y[:, :, a, bb] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / divisor
    return from_nchw(y, layout)


def avg_pool2d_backward(
    dout, shape, k=(2, 2), stride=(2, 2), pad=(0, 0), count_include_pad=True, layout="NCHW"
):
    """dx[h, w] = sum over the windows holding (h, w) of dout / divisor (as :func:`avg_pool2d`)."""
    dout = to_nchw(dout, layout)
    n, c, h, w = nchw_shape(shape, layout)
    (kh, kw), (sh, sw), p = k, stride, pad4(pad)
    dx = np.zeros((n, c, h, w))
    for a in range(dout.shape[2]):
        h0, h1, ph = _avg_window(a, sh, p[0], p[1], kh, h)
        for bb in range(dout.shape[3]):
            w0, w1, pw = _avg_window(bb, sw, p[2], p[3], kw, w)
            divisor = ph * pw if count_include_pad else (h1 - h0) * (w1 - w0)
            dx[:, :, h0:h1, w0:w1] += dout[:, :, a, bb, None, None] / divisor
    return from_nchw(dx, layout)


def global_avg_pool2d(x, layout="NCHW"):
    """Mean over H and W: (N, C, 1, 1) in NCHW, (N, 1, 1, C) in NHWC."""
    return from_nchw(to_nchw(x, layout).mean(axis=(2, 3), keepdims=True), layout)


def global_avg_pool2d_backward(dout, shape, layout="NCHW"):
    """dout / (H*W) at every position of its image and channel."""
    n, c, h, w = nchw_shape(shape, layout)
    return from_nchw(np.broadcast_to(to_nchw(dout, layout) / (h * w), (n, c, h, w)).copy(), layout)


# ---------------------------------------------------------------------------------------------------
# The book's algorithm
# ---------------------------------------------------------------------------------------------------


def im2col(x, kh, kw, stride=1, pad=0):
    """The book's im2col (common/util.py): a loop over taps, layout (N*OH*OW, C*kh*kw)."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride, pad, 1), out_size(w, kw, stride, pad, 1)
    img = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, :, i, j, :, :] = img[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)


def col2im(col, shape, kh, kw, stride=1, pad=0):
    """The book's col2im, with a padded buffer large enough for any stride."""
    n, c, h, w = shape
    oh, ow = out_size(h, kh, stride, pad, 1), out_size(w, kw, stride, pad, 1)
    col = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((n, c, h + 2 * pad + stride - 1, w + 2 * pad + stride - 1), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            img[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += col[:, :, i, j, :, :]
    return img[:, :, pad : h + pad, pad : w + pad]


class BookConvolution:
    """The book's Convolution layer (common/layers.py), the classic algorithm, for parity tests."""

    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad

    def forward(self, x):
        fn, c, fh, fw = self.W.shape
        n, c, h, w = x.shape
        oh, ow = out_size(h, fh, self.stride, self.pad, 1), out_size(w, fw, self.stride, self.pad, 1)
        self.x, self.col = x, im2col(x, fh, fw, self.stride, self.pad)
        self.col_W = self.W.reshape(fn, -1).T
        out = self.col @ self.col_W + self.b
        return out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        fn, c, fh, fw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = dout.sum(axis=0)
        self.dW = (self.col.T @ dout).transpose(1, 0).reshape(fn, c, fh, fw)
        dcol = dout @ self.col_W.T
        return col2im(dcol, self.x.shape, fh, fw, self.stride, self.pad)


class BookPooling:
    """The book's Pooling layer forward, plus the backward its later editions give (argmax of im2col rows)."""

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad

    def forward(self, x):
        n, c, h, w = x.shape
        oh, ow = (
            out_size(h, self.pool_h, self.stride, self.pad, 1),
            out_size(w, self.pool_w, self.stride, self.pad, 1),
        )
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad).reshape(
            -1, self.pool_h * self.pool_w
        )
        self.x, self.arg_max = x, col.argmax(axis=1)
        return col.max(axis=1).reshape(n, oh, ow, c).transpose(0, 3, 1, 2)

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, size))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dcol = dmax.reshape(*dout.shape, size).reshape(dout.shape[0] * dout.shape[1] * dout.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)
