"""The NumPy backend's six contract kernels: vectorised im2col/col2im, GEMM convolution, max pooling.

Every loop here runs over kernel taps (kh*kw iterations), never over pixels; the work inside each
iteration is a whole-array NumPy operation.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from fastconv._shapes import Pair, bad_argmax_error, conv_output_size
from fastconv.backends.numpy import winograd


def _pad(x: np.ndarray, pad: Pair, value: float = 0.0) -> np.ndarray:
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def _windows(xpad: np.ndarray, kh: int, kw: int, out_hw: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """Read-only view (N, C, kh, kw, OH, OW): view[n, c, i, j, oh, ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw].

    Every layout below is a transpose of this view, copied once.
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


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw), one copy out of a strided view."""
    out_hw = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    view = _windows(_pad(x, pad), kh, kw, out_hw, stride, dilation).transpose(0, 4, 5, 1, 2, 3)
    n, c = x.shape[:2]
    # a fresh array even where the view is already contiguous (1x1 kernels, window = input)
    return np.require(view, requirements=["C", "O"]).reshape(n * out_hw[0] * out_hw[1], c * kh * kw)


def _tap_slices(i: int, j: int, out_hw: Pair, stride: Pair, dilation: Pair) -> tuple[slice, slice]:
    """Rows/cols of the padded input read by tap (i, j): i*dh + oh*sh for oh in [0, OH)."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def _crop(xpad: np.ndarray, pad: Pair) -> np.ndarray:
    ph, pw = pad
    h, w = xpad.shape[2] - 2 * ph, xpad.shape[3] - 2 * pw
    return np.ascontiguousarray(xpad[:, :, ph : ph + h, pw : pw + w])


def _fold_taps(taps: np.ndarray, hw: Pair, stride: Pair, pad: Pair, dilation: Pair) -> np.ndarray:
    """taps: (A, B, kh, kw, OH, OW) -> (A, B, H, W), out[a, b, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += taps[a, b, i, j, oh, ow].

    The adjoint of a window view, as a loop over the kh*kw taps; shared by col2im in both column layouts.
    """
    a, b, kh, kw, oh, ow = taps.shape
    out = np.zeros((a, b, hw[0] + 2 * pad[0], hw[1] + 2 * pad[1]), dtype=taps.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap_slices(i, j, (oh, ow), stride, dilation)
            out[:, :, rows, cols] += taps[:, :, i, j]
    return out[:, :, pad[0] : pad[0] + hw[0], pad[1] : pad[1] + hw[1]]


def col2im(
    col: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), summing every column entry that read each pixel."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    # taps[n, c, i, j, oh, ow] = col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j]
    taps = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    return np.ascontiguousarray(_fold_taps(taps, (h, w), stride, pad, dilation))


def _columns(
    x: np.ndarray, kh: int, kw: int, out_hw: Pair, stride: Pair, pad: Pair, dilation: Pair
) -> np.ndarray:
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), so each conv GEMM is a single large BLAS call.

    cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    """
    n, c = x.shape[:2]
    oh, ow = out_hw
    view = _windows(_pad(x, pad), kh, kw, out_hw, stride, dilation).transpose(1, 2, 3, 0, 4, 5)
    return np.ascontiguousarray(view).reshape(c * kh * kw, n * oh * ow)


def _columns_to_image(
    cols: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> np.ndarray:
    """cols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W), the adjoint of :func:`_columns`."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    # taps[c, n, i, j, oh, ow] = cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow]; folded channel-major, like cols
    taps = cols.reshape(c, kh, kw, n, oh, ow).transpose(0, 3, 1, 2, 4, 5)
    return np.ascontiguousarray(_fold_taps(taps, (h, w), stride, pad, dilation).transpose(1, 0, 2, 3))


def conv2d_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    algorithm: str = "gemm",
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) -> y: (N, F, OH, OW).

    "gemm": one GEMM W2 @ cols; "winograd"/"winograd2", "direct": :mod:`.winograd`, :mod:`.direct`.
    """
    if algorithm in winograd.TILE:
        return winograd.forward(x, W, b, pad, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        from fastconv.backends.numpy import direct  # here: direct.py uses this module

        return direct.forward(x, W, b, stride, pad, dilation)
    n = x.shape[0]
    f, _, kh, kw = W.shape
    out_hw = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    y = W.reshape(f, -1) @ _columns(x, kh, kw, out_hw, stride, pad, dilation)  # (F, N*OH*OW)
    if b is not None:
        y += b[:, None]
    return np.ascontiguousarray(y.reshape(f, n, *out_hw).transpose(1, 0, 2, 3))


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

    "gemm": with D = dout as (F, N*OH*OW), dW = (cols @ D.T).T and dcols = W2.T @ D, folded back by
    col2im. "winograd"/"winograd2": :mod:`.winograd`; "direct": dx by :func:`.direct.backward_dx`
    (no col2im), dW and db as "gemm".
    """
    if algorithm in winograd.TILE:
        return winograd.backward(dout, x, W, pad, need_dx=need_dx, m=winograd.TILE[algorithm])
    if algorithm == "direct":
        from fastconv.backends.numpy import direct

        _, dW, db = conv2d_backward(dout, x, W, stride, pad, dilation, need_dx=False)
        dx = direct.backward_dx(dout, W, x.shape, stride, pad, dilation) if need_dx else None
        return dx, dW, db
    n, f, oh, ow = dout.shape
    _, _, kh, kw = W.shape
    d2 = np.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(f, n * oh * ow)
    db = d2.sum(axis=1)
    cols = _columns(x, kh, kw, (oh, ow), stride, pad, dilation)
    dW = (cols @ d2.T).T.reshape(W.shape)  # OpenBLAS runs this operand order faster than d2 @ cols.T
    dx = None
    if need_dx:
        del cols  # free the columns before the same-sized dcols is made
        dcols = W.reshape(f, -1).T @ d2  # (C*kh*kw, N*OH*OW)
        dx = _columns_to_image(dcols, x.shape, kh, kw, stride, pad, dilation)
    return dx, dW, db


def maxpool2d_forward(
    x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, C, H, W) -> y: (N, C, OH, OW) and argmax (N, C, OH, OW) int32 in [0, kh*kw)."""
    n, c = x.shape[:2]
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    view = _windows(_pad(x, pad, -np.inf), kh, kw, (oh, ow), stride, dilation)
    # windows[n, c, oh, ow, i*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    windows = view.transpose(0, 1, 4, 5, 2, 3).reshape(n, c, oh, ow, kh * kw)
    argmax = windows.argmax(axis=-1)
    y = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y), argmax.astype(np.int32)


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
    """dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W); window gradient goes to its argmax element.

    Raises ValueError when an argmax value lies outside [0, kh*kw).
    """
    if argmax.min() < 0 or argmax.max() >= kh * kw:
        raise bad_argmax_error(argmax, kh * kw)
    n, c, h, w = x_shape
    out_hw = argmax.shape[2:]
    dxpad = np.zeros((n, c, h + 2 * pad[0], w + 2 * pad[1]), dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap_slices(i, j, out_hw, stride, dilation)
            dxpad[:, :, rows, cols] += np.where(argmax == i * kw + j, dout, 0)
    return _crop(dxpad, pad)
