"""The NumPy backend's pooling kernels: max pooling (with argmax) and average pooling, both layouts.

As in :mod:`.ops`, loops run over the kh*kw window taps only, and every kernel computes in
(N, C, H, W) order (an "NHWC" array enters through the padded copy and leaves through the final
copy), so "NCHW" and "NHWC" share the code. ``out_hw`` is given by the caller (ceil mode makes it
one larger than the floor formula); the padding is extended at the bottom/right as far as the last
window reaches (:func:`_covering_pad`), so every window is a plain strided view.
"""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pad4, Pair, bad_argmax_error, from_nchw, to_nchw
from fastconv.backends.numpy.ops import (
    Shape4,
    _crop,
    _fold_taps,
    _in_layout,
    _nchw,
    _padded,
    _tap_slices,
    _windows,
    _zeros_padded,
)


def _covering_pad(hw: Pair, kernel: Pair, stride: Pair, pad: Pad4, dilation: Pair, out_hw: Pair) -> Pad4:
    """pad with bottom/right grown so the padded input holds the last window's last row/column,
    (OH - 1)*sh + dh*(kh - 1) + 1 rows (a ceil-mode window can reach past the caller's padding)."""
    top, bottom, left, right = pad
    need_h, need_w = ((o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, stride, dilation, kernel))
    return top, max(bottom, need_h - top - hw[0]), left, max(right, need_w - left - hw[1])


def maxpool2d_forward(
    x: np.ndarray,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    out_hw: Pair,
    layout: str,
) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, C, H, W) or (N, H, W, C) -> y (N, C, OH, OW) or (N, OH, OW, C), and argmax (int32, y's shape)
    in [0, kh*kw): the window-local index i*kw + j of the first maximum (NaN wins, as numpy.argmax)."""
    n, c, h, w = to_nchw(x.shape, layout)
    oh, ow = out_hw
    xpad = _padded(x, _covering_pad((h, w), (kh, kw), stride, pad, dilation, out_hw), layout, -np.inf)
    view = _windows(xpad, kh, kw, out_hw, stride, dilation)
    # windows[n, c, oh, ow, i*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw], in y's layout (one copy)
    order = (0, 1, 4, 5, 2, 3) if layout == "NCHW" else (0, 4, 5, 1, 2, 3)
    windows = view.transpose(order).reshape(*from_nchw((n, c, oh, ow), layout), kh * kw)
    argmax = windows.argmax(axis=-1)
    y = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
    if np.isneginf(y).any():  # only -inf in a window: name its first input element, never the padding
        first = _first_input_tap((kh, kw), stride, pad, dilation, out_hw)
        argmax = np.where(np.isneginf(y), first[:, :, None] if layout == "NHWC" else first, argmax)
    return np.ascontiguousarray(y), argmax.astype(np.int32)


def _first_input_tap(kernel: Pair, stride: Pair, pad: Pad4, dilation: Pair, out_hw: Pair) -> np.ndarray:
    """(OH, OW) array: each window's first tap inside x, i0*kw + j0 (the taps inside form a rectangle)."""
    firsts = []
    for k, s, p, d, o in zip(kernel, stride, pad[::2], dilation, out_hw):
        start = np.arange(o) * s - p  # row of tap 0; tap i reads start + i*d
        i0 = np.maximum(0, -(start // d))  # the first i with start + i*d >= 0
        firsts.append(np.minimum(i0, k - 1))
    return firsts[0][:, None] * kernel[1] + firsts[1][None, :]


def maxpool2d_backward(
    dout: np.ndarray,
    argmax: np.ndarray,
    x_shape: Shape4,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> np.ndarray:
    """dout, argmax: y's shape -> dx: x_shape (both in ``layout``); each window's gradient goes to the
    element its argmax names. Raises ValueError when an argmax value lies outside [0, kh*kw)."""
    if argmax.min() < 0 or argmax.max() >= kh * kw:
        raise bad_argmax_error(argmax, kh * kw)
    n, c, h, w = to_nchw(x_shape, layout)
    out_hw = to_nchw(dout.shape, layout)[2:]
    cover = _covering_pad((h, w), (kh, kw), stride, pad, dilation, out_hw)
    dxpad = _zeros_padded(n, c, (h, w), cover, dout.dtype)
    # read once into (N, C, OH, OW) order (no copy for "NCHW"), not once per tap
    dv, av = (np.ascontiguousarray(_nchw(a, layout)) for a in (dout, argmax))
    for i in range(kh):
        for j in range(kw):
            # dxpad[n, c, oh*sh + i*dh, ow*sw + j*dw] += dout[n, c, oh, ow] where argmax names tap (i, j)
            rows, cols = _tap_slices(i, j, out_hw, stride, dilation)
            dxpad[:, :, rows, cols] += np.where(av == i * kw + j, dv, 0)
    return _crop(dxpad, (h, w), cover, layout)


def _axis_counts(
    size: int, k: int, s: int, lo: int, hi: int, n_out: int, count_include_pad: bool
) -> np.ndarray:
    """Per output row o (or column): PyTorch's divisor count, start = o*s - lo, end = min(start + k,
    size + hi); [start, end) when padding counts, else [start, end) clipped to the input [0, size)."""
    start = np.arange(n_out) * s - lo
    end = np.minimum(start + k, size + hi)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _divisor(
    hw: Pair, kernel: Pair, stride: Pair, pad: Pad4, out_hw: Pair, count_include_pad: bool, dtype: np.dtype
) -> np.ndarray:
    """(OH, OW) divisors of the average pool: the outer product of the per-axis counts."""
    top, bottom, left, right = pad
    rows = _axis_counts(hw[0], kernel[0], stride[0], top, bottom, out_hw[0], count_include_pad)
    cols = _axis_counts(hw[1], kernel[1], stride[1], left, right, out_hw[1], count_include_pad)
    return np.outer(rows, cols).astype(dtype)


def avgpool2d_forward(
    x: np.ndarray,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    out_hw: Pair,
    count_include_pad: bool,
    layout: str,
) -> np.ndarray:
    """x: (N, C, H, W) or (N, H, W, C) -> y: (N, C, OH, OW) or (N, OH, OW, C), each window's sum over
    its input elements divided by PyTorch's divisor (:func:`_divisor`)."""
    n, c, h, w = to_nchw(x.shape, layout)
    xpad = _padded(x, _covering_pad((h, w), (kh, kw), stride, pad, (1, 1), out_hw), layout)
    view = _windows(xpad, kh, kw, out_hw, stride, (1, 1))
    y = np.zeros((n, c, *out_hw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # y[n, c, oh, ow] += xpad[n, c, oh*sh + i, ow*sw + j] (the zero padding adds nothing)
            y += view[:, :, i, j]
    y /= _divisor((h, w), (kh, kw), stride, pad, out_hw, count_include_pad, x.dtype)
    return _in_layout(y, layout)


def avgpool2d_backward(
    dout: np.ndarray,
    x_shape: Shape4,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    count_include_pad: bool,
    layout: str,
) -> np.ndarray:
    """dout: y's shape -> dx: x_shape (both in ``layout``); dx[h, w] = sum over the windows holding
    (h, w) of dout / divisor."""
    n, c, h, w = to_nchw(x_shape, layout)
    out_hw = to_nchw(dout.shape, layout)[2:]
    divisor = _divisor((h, w), (kh, kw), stride, pad, out_hw, count_include_pad, dout.dtype)
    g = np.ascontiguousarray(_nchw(dout, layout)) / divisor  # (N, C, OH, OW): each window's share
    cover = _covering_pad((h, w), (kh, kw), stride, pad, (1, 1), out_hw)
    dxpad = _zeros_padded(n, c, (h, w), cover, dout.dtype)
    # taps[n, c, i, j, oh, ow] = g[n, c, oh, ow]: every tap of a window gets the window's share
    taps = np.broadcast_to(g[:, :, None, None], (n, c, kh, kw, *out_hw))
    _fold_taps(taps, dxpad, stride, (1, 1))
    return _crop(dxpad, (h, w), cover, layout)
