"""Direct convolution for few input channels, and dx without col2im, in NumPy array code.

The same algorithms as :mod:`fastconv.backends.numba.direct`:

* :func:`forward`: y = bias + sum over the C*kh*kw taps of ``W[:, c, i, j] * (window view of x)``,
  one whole-array multiply-add per tap (no im2col matrix). A reference of the numba kernel's
  algorithm, not a fast path: it moves N*F*OH*OW elements C*kh*kw times (S1 float32: 53 ms against
  3.4 ms for the GEMM forward), so the NumPy backend's "auto" never picks it.
* :func:`backward_dx`: dx as stride-1 convolutions of dout, one per polyphase class (r_h, r_w) of
  dx: rows ``h = s*u + r`` only get the taps i with ``(r + pad - i*dil) % s == 0``; each class is
  dout, zero-padded (or cropped) to the class's window, convolved with the flipped sub-kernel of
  those taps, filters transposed, by the NumPy backend's GEMM forward, and written into
  ``dx[:, :, r_h::s_h, r_w::s_w]``. No zeros inserted, no col2im.
"""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pair, conv_output_size
from fastconv.backends.numpy import ops


def forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: Pair, pad: Pair, dilation: Pair
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW), one pass per tap."""
    n, c = x.shape[:2]
    f, _, kh, kw = W.shape
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    W = np.asarray(W, dtype=x.dtype)
    # view[n, c, i, j, oh, ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    view = ops._windows(ops._pad(x, pad), kh, kw, (oh, ow), stride, dilation)
    y = np.empty((n, f, oh, ow), dtype=x.dtype)
    y[...] = 0 if b is None else np.asarray(b, dtype=x.dtype).reshape(1, f, 1, 1)
    tmp = np.empty_like(y)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                # y[n, f] += W[f, c, i, j] * xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
                np.multiply(W[None, :, ci, i, j, None, None], view[:, ci, i, j][:, None], out=tmp)
                y += tmp
    return y


def _axis_phases(size: int, k: int, s: int, p: int, d: int) -> list[tuple[int, list[int], int, int, int]]:
    """Per residue r of dx rows h = s*u + r (u < U): (r, taps, pad, dil, U), with
    dx[s*u + r] = sum_m dout[u - pad + m*dil] * W[taps[m]]: taps are the i with
    (r + p - i*d) % s == 0 in decreasing order (the flipped sub-kernel)."""
    phases = []
    for r in range(min(s, size)):
        u_n = (size - r + s - 1) // s
        taps = [i for i in range(k - 1, -1, -1) if (r + p - i * d) % s == 0]
        e0 = (r + p - taps[0] * d) // s if taps else 0  # dout row offset of the first tap
        dil = (taps[0] - taps[1]) * d // s if len(taps) > 1 else 1
        phases.append((r, taps, -e0, dil, u_n))
    return phases


def _shifted(dout: np.ndarray, pads: tuple[int, int], sizes: tuple[int, int]) -> np.ndarray:
    """d[n, f, v, q] = dout[n, f, v - pads[0], q - pads[1]] (0 outside dout), shape (N, F, *sizes)."""
    n, f, oh, ow = dout.shape
    out = np.zeros((n, f, *sizes), dtype=dout.dtype)
    v0, v1 = max(0, pads[0]), min(sizes[0], oh + pads[0])
    q0, q1 = max(0, pads[1]), min(sizes[1], ow + pads[1])
    if v1 > v0 and q1 > q0:
        out[:, :, v0:v1, q0:q1] = dout[:, :, v0 - pads[0] : v1 - pads[0], q0 - pads[1] : q1 - pads[1]]
    return out


def backward_dx(
    dout: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> np.ndarray:
    """dout: (N, F, OH, OW), W: (F, C, kh, kw) -> dx: (N, C, H, W), the adjoint of the convolution
    in x, as polyphase stride-1 convolutions of dout (see the module docstring)."""
    n, c, h, w = x_shape
    f, _, kh, kw = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    W = np.asarray(W, dtype=dout.dtype)
    dx = np.empty((n, c, h, w), dtype=dout.dtype)
    for rh, taps_h, pad_h, dil_h, uh in _axis_phases(h, kh, sh, ph, dh):
        for rw, taps_w, pad_w, dil_w, uw in _axis_phases(w, kw, sw, pw, dw):
            if not taps_h or not taps_w:  # no tap reaches these rows/columns
                dx[:, :, rh::sh, rw::sw] = 0
                continue
            # wsub[c, f, m_h, m_w] = W[f, c, taps_h[m_h], taps_w[m_w]]
            wsub = np.ascontiguousarray(W[:, :, taps_h][:, :, :, taps_w].transpose(1, 0, 2, 3))
            mh, mw = len(taps_h), len(taps_w)
            sizes = (uh + (mh - 1) * dil_h, uw + (mw - 1) * dil_w)
            d = _shifted(dout, (pad_h, pad_w), sizes)
            dx[:, :, rh::sh, rw::sw] = ops.conv2d_forward(d, wsub, None, (1, 1), (0, 0), (dil_h, dil_w))
    return dx
