"""Independent float64 references: direct loops and the classic (book) algorithm.

Nothing here imports fastconv; the tests and :func:`fastconv.testing.check_backend` compare every
backend against these. Direct loops with (h, w) pairs for stride, pad and dilation: :func:`conv2d`,
:func:`conv2d_backward`, :func:`im2col_direct`, :func:`col2im_direct`, :func:`max_pool2d`,
:func:`max_pool2d_backward`. The book's algorithm (int stride and pad, no dilation): :func:`im2col`,
:func:`col2im`, :class:`BookConvolution`, :class:`BookPooling`.
"""

from __future__ import annotations

import numpy as np


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _padded(x, ph, pw, value):
    """x (N, C, H, W) in float64 inside a border of ``value``: (N, C, H + 2*ph, W + 2*pw)."""
    n, c, h, w = x.shape
    xpad = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=np.float64)
    xpad[:, :, ph : ph + h, pw : pw + w] = x
    return xpad


def conv2d(x, W, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1)):
    """Direct loop over output positions and taps: y[n,f,oh,ow] = b[f] + sum W[f,c,i,j] xpad[n,c,oh*s+i*d,ow*s+j*d]."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    xpad = _padded(x, ph, pw, 0.0)
    y = np.zeros((n, f, oh, ow))
    for a in range(oh):
        for bb in range(ow):
            for i in range(kh):
                for j in range(kw):
                    patch = xpad[:, :, a * sh + i * dh, bb * sw + j * dw]  # (n, c)
                    y[:, :, a, bb] += patch @ W[:, :, i, j].T
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, f, 1, 1)
    return y


def conv2d_backward(dout, x, W, stride=(1, 1), pad=(0, 0), dilation=(1, 1)):
    """Direct loops for dx, dW, db, the adjoints of :func:`conv2d`."""
    dout = np.asarray(dout, np.float64)
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh, ow = dout.shape[2:]
    xpad = _padded(x, ph, pw, 0.0)
    dxp = np.zeros_like(xpad)
    dW = np.zeros_like(W)
    for a in range(oh):
        for bb in range(ow):
            g = dout[:, :, a, bb]  # (n, f)
            for i in range(kh):
                for j in range(kw):
                    r, q = a * sh + i * dh, bb * sw + j * dw
                    dW[:, :, i, j] += g.T @ xpad[:, :, r, q]
                    dxp[:, :, r, q] += g @ W[:, :, i, j]
    return dxp[:, :, ph : ph + h, pw : pw + w], dW, dout.sum(axis=(0, 2, 3))


def im2col_direct(
    x: np.ndarray,
    kh: int,
    kw: int,
    stride: tuple[int, int] = (1, 1),
    pad: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) in float64, by a direct loop over output positions and taps.

    col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw] (zero padding);
    the contract's formula, with (h, w) pairs for stride, pad and dilation.
    """
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    xpad = _padded(x, ph, pw, 0.0)
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
    pad: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W) in float64, the adjoint of :func:`im2col_direct`.

    A direct loop over output positions and taps adding each column entry into the pixel it read;
    entries that read padding are dropped.
    """
    n, c, h, w = x_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    col = np.asarray(col, np.float64).reshape(n, oh, ow, c, kh, kw)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for a in range(oh):
        for bb in range(ow):
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, a * sh + i * dh, bb * sw + j * dw] += col[:, a, bb, :, i, j]
    return dxp[:, :, ph : ph + h, pw : pw + w]


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


def max_pool2d(x, k=(2, 2), stride=(2, 2), pad=(0, 0), dilation=(1, 1)):
    """Direct loop over windows; argmax is numpy.argmax of the row-major flattened window."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, stride, pad, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    xpad = _padded(x, ph, pw, -np.inf)
    y = np.empty((n, c, oh, ow))
    arg = np.empty((n, c, oh, ow), np.int64)
    for a in range(oh):
        for bb in range(ow):
            win = xpad[
                :, :, a * sh : a * sh + dh * (kh - 1) + 1 : dh, bb * sw : bb * sw + dw * (kw - 1) + 1 : dw
            ]
            flat = win.reshape(n, c, kh * kw)
            arg[:, :, a, bb] = flat.argmax(axis=-1)
            y[:, :, a, bb] = np.take_along_axis(flat, arg[:, :, a, bb][..., None], -1)[..., 0]
    return y, arg


def max_pool2d_backward(dout, arg, shape, k=(2, 2), stride=(2, 2), pad=(0, 0), dilation=(1, 1)):
    n, c, h, w = shape
    (_, kw), (sh, sw), (ph, pw), (dh, dw) = k, stride, pad, dilation
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for nn in range(n):
        for cc in range(c):
            for a in range(dout.shape[2]):
                for bb in range(dout.shape[3]):
                    i, j = divmod(int(arg[nn, cc, a, bb]), kw)
                    dxp[nn, cc, a * sh + i * dh, bb * sw + j * dw] += dout[nn, cc, a, bb]
    return dxp[:, :, ph : ph + h, pw : pw + w]


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
