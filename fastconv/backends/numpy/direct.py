"""Direct convolution for few input channels, and dx without col2im, in NumPy array code.

The same algorithms as :mod:`fastconv.backends.numba.direct`, here for every groups and both layouts
(computed in (N, C, H, W) order, an "NHWC" array copied in and out, as in :mod:`.ops`):

* :func:`forward`: y = bias + sum over the Cg*kh*kw taps of ``W[:, c, i, j] * (window view of x's
  channel g*Cg + c)``, one whole-array multiply-add per tap for every group at once (no im2col
  matrix). A reference of the numba kernel's algorithm, not a fast path: it moves N*F*OH*OW
  elements Cg*kh*kw times (S1 float32: 53 ms against 3.4 ms for the GEMM forward), so the NumPy
  backend's "auto" never picks it.
* :func:`backward_dx`: dx as stride-1 convolutions of dout, one per polyphase class (r_h, r_w) of
  dx: rows ``h = s*u + r`` only get the taps i with ``(r + top - i*dil) % s == 0``; each class is
  dout, zero-padded (or cropped) to the class's window, convolved with the flipped sub-kernel of
  those taps, filters transposed within each group, by the NumPy backend's grouped GEMM forward, and
  written into ``dx[:, :, r_h::s_h, r_w::s_w]``. No zeros inserted, no col2im.
"""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pad4, Pair, conv_output_size, to_nchw
from fastconv.backends.numpy import ops


def forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """x: (N, C, H, W) or (N, H, W, C), W: (F, C // groups, kh, kw), b: (F,) or None -> y: (N, F, OH, OW)
    or (N, OH, OW, F), one pass per tap of a group's filter (Cg*kh*kw passes, every group at once)."""
    n, c, h, w = to_nchw(x.shape, layout)
    f, cg, kh, kw = W.shape
    fg = f // groups
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    W = np.asarray(W, dtype=x.dtype)
    # view[n, g, c, i, j, oh, ow] = xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]
    view = ops._windows(ops._padded(x, pad, layout), kh, kw, (oh, ow), stride, dilation)
    view = view.reshape(n, groups, cg, kh, kw, oh, ow)
    Wg = W.reshape(groups, fg, cg, kh, kw)
    y = np.empty((n, groups, fg, oh, ow), dtype=x.dtype)  # the filter axis split into (G, Fg)
    y[...] = 0 if b is None else np.asarray(b, dtype=x.dtype).reshape(1, groups, fg, 1, 1)
    tmp = np.empty_like(y)
    for ci in range(cg):
        for i in range(kh):
            for j in range(kw):
                # y[n, g*Fg + f] += W[g*Fg + f, c, i, j] * xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]
                np.multiply(Wg[None, :, :, ci, i, j, None, None], view[:, :, None, ci, i, j], out=tmp)
                y += tmp
    return ops._in_layout(y.reshape(n, f, oh, ow), layout)


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
    """dout: an (N, F, OH, OW)-ordered view -> d (N, F, *sizes), d[n, f, v, q] = dout[n, f, v - pads[0], q - pads[1]]
    (0 outside dout)."""
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
    x_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """dout: (N, F, OH, OW) or (N, OH, OW, F), W: (F, C // groups, kh, kw) -> dx of x_shape (in
    ``layout``), the adjoint of the convolution in x, as polyphase stride-1 grouped convolutions of
    dout (see the module docstring). Only the top/left pads enter: dout's size carries the rest."""
    n, c, h, w = to_nchw(x_shape, layout)
    f, cg, kh, kw = W.shape
    fg = f // groups
    (sh, sw), (dh, dw) = stride, dilation
    top, _, left, _ = pad
    W = np.asarray(W, dtype=dout.dtype)
    dx = np.empty((n, c, h, w), dtype=dout.dtype)
    dv = ops._nchw(dout, layout)
    for rh, taps_h, pad_h, dil_h, uh in _axis_phases(h, kh, sh, top, dh):
        for rw, taps_w, pad_w, dil_w, uw in _axis_phases(w, kw, sw, left, dw):
            if not taps_h or not taps_w:  # no tap reaches these rows/columns
                dx[:, :, rh::sh, rw::sw] = 0
                continue
            mh, mw = len(taps_h), len(taps_w)
            # the transposed grouped filters: wsub[g*Cg + c, f, m_h, m_w] = W[g*Fg + f, c, taps_h[m_h], taps_w[m_w]]
            wsub = W[:, :, taps_h][:, :, :, taps_w].reshape(groups, fg, cg, mh, mw).transpose(0, 2, 1, 3, 4)
            wsub = np.ascontiguousarray(wsub).reshape(c, fg, mh, mw)
            sizes = (uh + (mh - 1) * dil_h, uw + (mw - 1) * dil_w)
            d = _shifted(dv, (pad_h, pad_w), sizes)
            dx[:, :, rh::sh, rw::sw] = ops.conv2d_forward(
                d, wsub, None, (1, 1), (0, 0, 0, 0), (dil_h, dil_w), groups, "NCHW"
            )
    return ops._in_layout(dx, layout)
