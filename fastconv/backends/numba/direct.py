"""Direct convolution for few input channels, dx without col2im, and grouped / depthwise convolution,
for the numba backend.

* :func:`forward`: a direct kernel (no im2col, no GEMM). Per image it copies x once into a padded
  buffer with one column-shifted copy per tap column j and one plane per row phase,
  ``xs[c, j, rh, mh, ow] = xpad[c, mh*sh + rh, ow*sw + j*dw]``, whose rows have the pitch OW of
  y: the rows r0..r1 of every tap (c, i, j) are then one contiguous run of ``xs``, and those of an
  output plane one run of y, whatever the stride, padding or dilation (no spill-over columns).
  Work items: (image, block of output rows, block of 4 filters); the 4 filters' sums for the block
  live in an L1 buffer, 4 filters x 4 taps per vector pass (each x value loaded once for 4
  filters: FMA-bound rather than load/store-bound), the bias folded into the first pass, and the
  last tap added in the pass that writes y, so each output element is written once. Filters are
  zero-padded to a multiple of 4. Cost: C*kh*kw multiply-adds per output element, so it is meant
  for few input channels (``algorithms.py`` says when "auto" runs it).
* :func:`backward_dx`: dx as convolutions of dout. Stride 1: one convolution of dout padded by
  ``dil*(k-1) - pad`` (cropped where that is negative) with the filters flipped and transposed.
  Stride s: polyphase; dx at rows ``h = s*u + r`` only get taps i with ``(r + pad - i*dil) % s == 0``,
  so each phase (r_h, r_w) is a stride-1 convolution with the sub-kernel of its taps, written into
  ``dx[:, :, r_h::s_h, r_w::s_w]``; no zeros are inserted and no tap is computed twice. Each
  convolution runs on the direct kernel when dx has few channels (``DIRECT_DX_MAX_C``), else on
  im2col + GEMM (the backend's own ``im2col_planes`` kernel with the phase's offsets, then BLAS).
  Measured here it does not beat the col2im path on S1-S5 (the im2col of dout has F*kh*kw rows on
  the dx grid, F/C times the data col2im reads) and ties it on S6: see benchmarks/direct_vs_torch.py.
* :func:`grouped_forward`, :func:`grouped_dx`, :func:`grouped_backward`: groups > 1 (depthwise, a
  depthwise multiplier, few channels per group), both layouts; the kernels are in ``kernels.py``
  (NCHW: vectors along the output rows of the phase-split layout; NHWC with one input channel per
  group: vectors along (ow, c) of a row). dW sums per group (NCHW) or per channel (NHWC) over all
  images in one order: the same bits for any thread count. Depthwise with multiplier 1 and stride 1
  in NCHW takes the flat-plane kernels instead (``dw_flat_forward``, ``dw_flat_backward``): each
  (n, c) plane copied once into a zero-padded flat buffer whose rows have the pitch of the padded
  output, so every tap is one contiguous shifted slice of the whole plane (long vectors, where a
  28-wide row is too short to vectorise well), all taps of a 3x3 in one pass; the backward gives dx,
  dW and db of a channel in one kernel.
"""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pad4, Pair, as_pad4, conv_output_size
from fastconv.backends.numba import kernels, ops, runtime
from fastconv.backends.numpy.direct import _axis_phases  # pure Python, shared with the twin

# dx of a layer with at most this many input channels runs on the direct kernel.
DIRECT_DX_MAX_C = 4
# Accumulator length per block of output rows (elements): 4 filters' sums (16 KiB in float32) stay in
# L1 with the rows of xs they read (2048 was 1.6x slower on x(32,3,64,64) W(64,3,3,3) p1).
BLOCK = 1024


@runtime.cached_njit(nogil=True, fastmath={"contract"})
def direct_conv(t0, t1, x, w4, bias, y, sh, sw, ph, pw, dh, dw, kh, kw, rb):  # pragma: no cover
    """y[n, f, oh, ow] = bias[f] + sum_{c,i,j} w4[f, (c*kh + i)*kw + j]
    * x[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] (zero outside x), y (N, F, OH, OW)
    C-contiguous; w4, bias padded with zeros to a multiple of 4 filters. Work items t0..t1-1
    of (image, block of rb output rows, block of 4 filters). Any ph, pw (negative ones crop)."""
    n_n, c_n, h_n, w_n = x.shape
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    fb_n = w4.shape[0] // 4
    kk = c_n * kh * kw
    nb = (oh_n + rb - 1) // rb
    mh_n = oh_n + ((kh - 1) * dh) // sh  # rows per row phase
    pl = mh_n * ow_n
    xs = np.empty(c_n * kw * sh * pl, dtype=x.dtype)
    acc = np.empty((4, rb * ow_n), dtype=x.dtype)
    # tap (c, i, j) at output (oh, ow) reads xs[c, j, (i*dh) % sh, oh + (i*dh)//sh, ow]: with the
    # row pitch OW of y, the rows r0..r1 of a tap are one run of xs, those of an output one run of y
    off = np.empty(kk, dtype=np.int64)
    for c in range(c_n):
        for i in range(kh):
            for j in range(kw):
                p = ((c * kw + j) * sh + (i * dh) % sh) * pl
                off[(c * kh + i) * kw + j] = p + ((i * dh) // sh) * ow_n
    gl = kk - 1  # the last tap is added in the pass that writes y
    k4 = gl - gl % 4
    zero = x.dtype.type(0)
    cur = -1
    for t in range(t0, t1):
        n = t // (nb * fb_n)
        r0 = ((t // fb_n) % nb) * rb
        f0 = (t % fb_n) * 4
        if n != cur:  # xs[c, j, rh, mh, ow] = x[n, c, mh*sh + rh - ph, ow*sw + j*dw - pw], 0 outside
            cur = n
            for c in range(c_n):
                for j in range(kw):
                    w0 = j * dw - pw
                    lo = min(ow_n, max(0, (-w0 + sw - 1) // sw))  # ow in [lo, hi): column inside x
                    hi = max(lo, min(ow_n, (w_n - 1 - w0) // sw + 1 if w_n - 1 - w0 >= 0 else 0))
                    for rh in range(sh):
                        base = ((c * kw + j) * sh + rh) * pl
                        for mh in range(mh_n):
                            h = mh * sh + rh - ph
                            dst = xs[base + mh * ow_n : base + (mh + 1) * ow_n]
                            if h < 0 or h >= h_n:
                                dst[:] = zero
                                continue
                            dst[:lo] = zero
                            dst[hi:] = zero
                            src = x[n, c, h]
                            d = dst[lo:hi]
                            if sw == 1:
                                s = src[lo + w0 : hi + w0]
                                for q in range(hi - lo):
                                    d[q] = s[q]
                            else:
                                for q in range(hi - lo):
                                    d[q] = src[(lo + q) * sw + w0]
        r1 = min(oh_n, r0 + rb)
        m = (r1 - r0) * ow_n
        o = r0 * ow_n
        a0, a1, a2, a3 = acc[0, :m], acc[1, :m], acc[2, :m], acc[3, :m]
        wb = w4[f0 : f0 + 4]
        # a_ff = bias[f0 + ff] + taps over rows r0..r1: 4 filters x 4 taps per pass, in L1
        if k4 == 0:
            for ff in range(4):
                acc[ff, :m] = bias[f0 + ff]
        for g in range(0, k4, 4):
            w00, w01, w02, w03 = wb[0, g], wb[0, g + 1], wb[0, g + 2], wb[0, g + 3]
            w10, w11, w12, w13 = wb[1, g], wb[1, g + 1], wb[1, g + 2], wb[1, g + 3]
            w20, w21, w22, w23 = wb[2, g], wb[2, g + 1], wb[2, g + 2], wb[2, g + 3]
            w30, w31, w32, w33 = wb[3, g], wb[3, g + 1], wb[3, g + 2], wb[3, g + 3]
            x0 = xs[off[g] + o : off[g] + o + m]
            x1 = xs[off[g + 1] + o : off[g + 1] + o + m]
            x2 = xs[off[g + 2] + o : off[g + 2] + o + m]
            x3 = xs[off[g + 3] + o : off[g + 3] + o + m]
            if g == 0:
                b0, b1, b2, b3 = bias[f0], bias[f0 + 1], bias[f0 + 2], bias[f0 + 3]
                for q in range(m):
                    v0, v1, v2, v3 = x0[q], x1[q], x2[q], x3[q]
                    a0[q] = b0 + w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                    a1[q] = b1 + w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                    a2[q] = b2 + w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                    a3[q] = b3 + w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
            else:
                for q in range(m):
                    v0, v1, v2, v3 = x0[q], x1[q], x2[q], x3[q]
                    a0[q] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                    a1[q] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                    a2[q] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                    a3[q] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
        for g in range(k4, gl):  # the taps left over, one per pass
            w00, w10, w20, w30 = wb[0, g], wb[1, g], wb[2, g], wb[3, g]
            x0 = xs[off[g] + o : off[g] + o + m]
            for q in range(m):
                v0 = x0[q]
                a0[q] += w00 * v0
                a1[q] += w10 * v0
                a2[q] += w20 * v0
                a3[q] += w30 * v0
        # y[n, f0 + ff, r0:r1] = a_ff + the last tap: one run per filter, each element written once
        x0 = xs[off[gl] + o : off[gl] + o + m]
        for ff in range(min(4, f_n - f0)):
            wl = wb[ff, gl]
            s0 = acc[ff, :m]
            y0 = y[n, f0 + ff].reshape(oh_n * ow_n)[o : o + m]
            for q in range(m):
                y0[q] = s0[q] + wl * x0[q]


_direct_conv = runtime.Announced(direct_conv)


def _run_direct(x, w2, bias, y, stride, pad, dilation, k) -> None:
    """y (N, F, OH, OW), C-contiguous = conv(x; w2 (F, C*kh*kw), bias or None): see direct_conv; pad is
    (top, left) here (y's shape carries the rest)."""
    n, f, oh, ow = y.shape
    if y.size == 0:
        return
    f4 = -(-f // 4) * 4  # filters in blocks of 4, zero-padded
    w4 = np.zeros((f4, w2.shape[1]), dtype=x.dtype)
    w4[:f] = w2
    b4 = np.zeros(f4, dtype=x.dtype)
    if bias is not None:
        b4[:f] = bias
    rb = max(1, min(oh, BLOCK // ow))
    rb = -(-oh // -(-oh // rb))  # equal blocks
    nb = -(-oh // rb)
    _direct_conv(n * nb * (f4 // 4), x, w4, b4, y, *stride, *pad, *dilation, *k, rb)


def forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: Pair, pad: Pad4, dilation: Pair
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW), by the direct kernel
    (pad (top, bottom, left, right)).

    Correct for any shape; ``algorithms.choose_algorithm`` says where it is the faster algorithm.
    """
    x = np.ascontiguousarray(x)
    pad = as_pad4(pad)  # a symmetric (h, w) pair reads as (h, h, w, w)
    f, c, kh, kw = W.shape
    oh, ow = conv_output_size(x.shape[2:], (kh, kw), stride, pad, dilation)
    w2 = np.ascontiguousarray(W, dtype=x.dtype).reshape(f, c * kh * kw)
    y = np.empty((x.shape[0], f, oh, ow), dtype=x.dtype)
    _run_direct(x, w2, b, y, tuple(stride), (pad[0], pad[2]), tuple(dilation), (kh, kw))
    return y


# ----------------------------------------------------------------------------------------------
# dx
# ----------------------------------------------------------------------------------------------


def _gemm_phase(dout, wsub, dx, out_hw, pad, dil, k, y_off, y_step) -> None:
    """dx[:, :, y_off + u*y_step] = conv(dout, wsub (C, F*kh*kw), stride 1, pad, dil) by im2col + GEMM.

    pad may be negative (a crop); the output size is out_hw (the im2col kernel zero-fills reads
    outside dout on either side).
    """
    n, f = dout.shape[:2]
    c = wsub.shape[0]
    uh, uw = out_hw
    kk, p = wsub.shape[1], uh * uw
    wide = ops._wide(p)
    step = ops._chunk(n, kk * p * dout.itemsize)
    direct_write = y_step == (1, 1) and y_off == (0, 0) and dx.shape[2:] == (uh, uw)
    col = None
    for n0 in range(0, n, step):
        m = min(step, n - n0)
        if col is None or (col.shape[1] if wide else col.shape[0]) != m:
            col = np.empty((kk, m, p) if wide else (m, kk, p), dtype=dout.dtype)
        ops._im2col_planes(m * f, dout, n0, col, wide, *k, 1, 1, *pad, *dil, uh, uw)
        dst = dx[n0 : n0 + m, :, y_off[0] :: y_step[0], y_off[1] :: y_step[1]]
        if wide:  # (C, K) @ (K, m*P) -> (C, m, P)
            yw = np.empty((c, m * p), dtype=dout.dtype)
            ops._split(ops._mm_cols, m * p, wsub, col.reshape(kk, m * p), yw)
            dst[...] = yw.reshape(c, m, uh, uw).transpose(1, 0, 2, 3)
        elif direct_write:  # dx[n] = wsub @ col[n], in place
            ops._split(ops._mm_batch, m, wsub, col, dx[n0 : n0 + m].reshape(m, c, p))
        else:
            yb = np.empty((m, c, p), dtype=dout.dtype)
            ops._split(ops._mm_batch, m, wsub, col, yb)
            dst[...] = yb.reshape(m, c, uh, uw)


def backward_dx(
    dout: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
) -> np.ndarray:
    """dout: (N, F, OH, OW), W: (F, C, kh, kw) -> dx: (N, C, H, W), the adjoint of the convolution
    of x in its input, without col2im (see the module docstring); any stride, padding, dilation."""
    dout = np.ascontiguousarray(dout)
    n, c, h, w = x_shape
    f, _, kh, kw = W.shape
    oh, ow = dout.shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    ph, pw = as_pad4(pad)[0], as_pad4(pad)[2]  # the index math needs only the top and left padding
    W = np.asarray(W, dtype=dout.dtype)
    ph_rows = _axis_phases(h, kh, sh, ph, dh)
    ph_cols = _axis_phases(w, kw, sw, pw, dw)
    dx = np.empty((n, c, h, w), dtype=dout.dtype)
    direct = c <= DIRECT_DX_MAX_C
    for rh, taps_h, pad_h, dil_h, uh in ph_rows:
        for rw, taps_w, pad_w, dil_w, uw in ph_cols:
            if not taps_h or not taps_w:  # no tap reaches these rows/columns: dx is 0 there
                dx[:, :, rh::sh, rw::sw] = 0
                continue
            # wsub[c, f, m_h, m_w] = W[f, c, taps_h[m_h], taps_w[m_w]]
            wsub = W[:, :, taps_h][:, :, :, taps_w].transpose(1, 0, 2, 3)
            wsub = np.ascontiguousarray(wsub).reshape(c, -1)
            k = (len(taps_h), len(taps_w))
            if direct:
                whole = (sh, sw) == (1, 1)  # one phase: dx itself
                out = dx if whole else np.empty((n, c, uh, uw), dtype=dout.dtype)
                _run_direct(dout, wsub, None, out, (1, 1), (pad_h, pad_w), (dil_h, dil_w), k)
                if not whole:
                    dx[:, :, rh::sh, rw::sw] = out
            else:
                _gemm_phase(dout, wsub, dx, (uh, uw), (pad_h, pad_w), (dil_h, dil_w), k, (rh, rw), (sh, sw))
    return dx


# ----------------------------------------------------------------------------------------------
# Grouped and depthwise convolution (groups > 1): direct kernels, both layouts
# ----------------------------------------------------------------------------------------------
# NCHW: kernels.group_forward / group_dx / group_dw on the phase-split layout (vectors along the
# output rows). NHWC with one input channel per group (depthwise, any multiplier):
# kernels.dw_*_nhwc (vectors along the channels). NHWC with more input channels per group goes
# through NCHW copies of x and the result.

_group_forward = runtime.Announced(kernels.group_forward)
_group_dx = runtime.Announced(kernels.group_dx)
_dw_forward_nhwc = runtime.Announced(kernels.dw_forward_nhwc)
_dw_dx_nhwc = runtime.Announced(kernels.dw_dx_nhwc)
_dw_flat_forward = runtime.Announced(kernels.dw_flat_forward)
_dw_flat_backward = runtime.Announced(kernels.dw_flat_backward)


def _flat(W: np.ndarray, groups: int, stride: Pair) -> bool:
    """Whether the NCHW flat-plane kernels run: stride 1, depthwise with multiplier 1 (F == C == groups)."""
    return tuple(stride) == (1, 1) and W.shape[1] == 1 and W.shape[0] == groups


def _flipped(W: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """wfl[c, i*kw + j] = W[c, 0, kh-1-i, kw-1-j]: the kernel of dx as a correlation of dout."""
    f, _, kh, kw = W.shape
    return np.ascontiguousarray(np.asarray(W, dtype=dtype)[:, 0, ::-1, ::-1]).reshape(f, kh * kw)


def _phase_geometry(out_hw: Pair, k: Pair, stride: Pair, dilation: Pair) -> tuple[int, int]:
    """(MH, PC) of the phase-split layout: rows per row phase and the row pitch, enough for every tap
    of every output: MH = OH + (kh-1)*dh // sh, PC = OW + (kw-1)*dw // sw."""
    return (
        out_hw[0] + (k[0] - 1) * dilation[0] // stride[0],
        out_hw[1] + (k[1] - 1) * dilation[1] // stride[1],
    )


def _tap_offsets(cg: int, k: Pair, stride: Pair, dilation: Pair, mh: int, pc: int) -> np.ndarray:
    """off[(c*kh + i)*kw + j]: where tap (i, j) of channel c starts in the phase-split layout."""
    (kh, kw), (sh, sw), (dh, dw) = k, stride, dilation
    cs = sh * sw * mh * pc
    off = np.empty(cg * kh * kw, dtype=np.int64)
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                phase = ((i * dh) % sh) * sw + (j * dw) % sw
                off[(c * kh + i) * kw + j] = c * cs + phase * mh * pc + (i * dh) // sh * pc + (j * dw) // sw
    return off


def _dx_phases(k: Pair, stride: Pair, dilation: Pair, pc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The taps of each phase p = rh*sw + rw of the phase-split layout for kernels.group_dx: tap
    index i*kw + j and shift ((i*dh)//sh)*PC + (j*dw)//sw, phase p's taps at pstart[p]..pstart[p+1]-1."""
    (kh, kw), (sh, sw), (dh, dw) = k, stride, dilation
    taps, shifts, start = [], [], [0]
    for rh in range(sh):
        for rw in range(sw):
            for i in range(kh):
                for j in range(kw):
                    if (i * dh) % sh == rh and (j * dw) % sw == rw:
                        taps.append(i * kw + j)
                        shifts.append((i * dh) // sh * pc + (j * dw) // sw)
            start.append(len(taps))
    as_int = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return as_int(taps), as_int(shifts), as_int(start)


def _nhwc_weights(W: np.ndarray, groups: int, ow: int, dtype: np.dtype) -> np.ndarray:
    """wq[i*kw + j, k, o*C + c] = W[c*M + k, 0, i, j] for depthwise W (C*M, 1, kh, kw), C = groups,
    tiled along the OW pixels of an output row."""
    f, _, kh, kw = W.shape
    w3 = np.asarray(W, dtype=dtype).reshape(groups, f // groups, kh * kw).transpose(2, 1, 0)  # (K, M, C)
    return np.ascontiguousarray(np.tile(w3, (1, 1, ow)))


def _relayout_nchw(a: np.ndarray) -> np.ndarray:
    return ops._relayout(a, ops.NCHW)  # NHWC -> NCHW, images shared among the threads


def _relayout_nhwc(a: np.ndarray) -> np.ndarray:
    return ops._relayout(a, ops.NHWC)  # NCHW -> NHWC


def _bias(b: np.ndarray | None, f: int, dtype: np.dtype) -> np.ndarray:
    return np.zeros(f, dtype=dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)


def _row_blocks(n: int, oh: int) -> int:
    """Blocks of output rows per image for dw_forward_nhwc: one, unless the images are too few to
    keep every thread busy."""
    return max(1, min(oh, -(-4 * runtime.num_threads() // n)))


def grouped_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """The convolution with ``groups`` (W (F, C // groups, kh, kw)) in ``layout``, by the direct
    kernels: meant for few input channels per group (depthwise, small groups)."""
    x = np.ascontiguousarray(x)
    f, cg, kh, kw = W.shape
    if layout == "NHWC" and cg != 1:
        return _relayout_nhwc(grouped_forward(_relayout_nchw(x), W, b, stride, pad, dilation, groups, "NCHW"))
    hw = x.shape[1:3] if layout == "NHWC" else x.shape[2:]
    oh, ow = conv_output_size(hw, (kh, kw), stride, pad, dilation)
    n = x.shape[0]
    top, left = pad[0], pad[2]
    if layout == "NHWC":
        m = f // groups
        wq = _nhwc_weights(W, groups, ow, x.dtype)
        bq = np.tile(_bias(b, f, x.dtype).reshape(groups, m).T, (1, ow))  # bq[k, o*C + c] = b[c*M + k]
        y = np.empty((n, oh, ow, f), dtype=x.dtype)
        nb = _row_blocks(n, oh)
        _dw_forward_nhwc(n * nb, x, wq, bq, y, nb, *stride, top, left, *dilation, kh, kw)
        return y
    w2 = np.ascontiguousarray(W, dtype=x.dtype).reshape(f, cg * kh * kw)
    y = np.empty((n, f, oh, ow), dtype=x.dtype)
    if _flat(W, groups, stride):
        _dw_flat_forward(n * f, x, w2, _bias(b, f, x.dtype), y, top, left, *dilation, kh, kw)
        return y
    mh, pc = _phase_geometry((oh, ow), (kh, kw), stride, dilation)
    off = _tap_offsets(cg, (kh, kw), stride, dilation, mh, pc)
    _group_forward(n * groups, x, w2, _bias(b, f, x.dtype), off, y, groups, *stride, top, left, mh, pc)
    return y


def grouped_dx(
    dout: np.ndarray,
    W: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
) -> np.ndarray:
    """dx of :func:`grouped_forward` (its adjoint in x), from dout alone; x_shape in the layout's order."""
    dout = np.ascontiguousarray(dout)
    f, cg, kh, kw = W.shape
    top, left = pad[0], pad[2]
    if layout == "NHWC" and cg != 1:
        n, h, w, c = x_shape
        return _relayout_nhwc(
            grouped_dx(_relayout_nchw(dout), W, (n, c, h, w), stride, pad, dilation, groups, "NCHW")
        )
    dx = np.empty(x_shape, dtype=dout.dtype)
    if layout == "NHWC":
        wq = _nhwc_weights(W, groups, dout.shape[2], dout.dtype)
        _dw_dx_nhwc(x_shape[0], dout, wq, dx, *stride, top, left, *dilation, kh, kw)
        return dx
    if _flat(W, groups, stride):  # the forward kernel on dout, the kernel flipped
        a, e = (kh - 1) * dilation[0] - top, (kw - 1) * dilation[1] - left
        zeros = np.zeros(f, dtype=dout.dtype)
        _dw_flat_forward(x_shape[0] * f, dout, _flipped(W, dout.dtype), zeros, dx, a, e, *dilation, kh, kw)
        return dx
    oh, ow = dout.shape[2:]
    mh, pc = _phase_geometry((oh, ow), (kh, kw), stride, dilation)
    ptap, pshift, pstart = _dx_phases((kh, kw), stride, dilation, pc)
    w2 = np.ascontiguousarray(W, dtype=dout.dtype).reshape(f, cg * kh * kw)
    _group_dx(x_shape[0] * groups, dout, w2, ptap, pshift, pstart, dx, groups, *stride, top, left, mh, pc)
    return dx


def grouped_backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    layout: str,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx or None, dW, db) of :func:`grouped_forward`. dW and db are summed per group (NCHW) or per
    block of channels (NHWC) over all images in one order: the same bits for any thread count."""
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    f, cg, kh, kw = W.shape
    top, left = pad[0], pad[2]
    if layout == "NHWC" and cg != 1:
        dx, dW, db = grouped_backward(
            _relayout_nchw(dout), _relayout_nchw(x), W, stride, pad, dilation, groups, "NCHW", need_dx
        )
        return (_relayout_nhwc(dx) if dx is not None else None), dW, db
    if layout == "NCHW" and _flat(W, groups, stride):
        dx = np.empty(x.shape, dtype=x.dtype) if need_dx else np.empty((1, 1, 1, 1), dtype=x.dtype)
        dwt = np.empty((f, kh * kw), dtype=x.dtype)
        db = np.empty(f, dtype=x.dtype)
        wfl = _flipped(W, x.dtype)
        _dw_flat_backward(f, x, dout, wfl, dx, dwt, db, top, left, *dilation, kh, kw, need_dx)
        if np.isnan(dwt).any():  # maybe a non-finite value times a padding zero: the exact sums decide
            oh, ow = dout.shape[2:]
            mh, pc = _phase_geometry((oh, ow), (kh, kw), stride, dilation)
            off = _tap_offsets(cg, (kh, kw), stride, dilation, mh, pc)
            args = (x, dout, off, dwt, db, groups, *stride, top, left, mh, pc, True)
            with runtime.compile_notice("group_dw", x.dtype.name):
                runtime.parallel_for(kernels.group_dw, groups, *args)
        return (dx if need_dx else None), dwt.reshape(W.shape), db
    dx = grouped_dx(dout, W, x.shape, stride, pad, dilation, groups, layout) if need_dx else None
    if layout == "NHWC":
        c, m = x.shape[3], f // groups
        dwt = np.empty((kh * kw, m, c), dtype=x.dtype)
        dbt = np.empty((m, c), dtype=x.dtype)
        # shares of about 64 channels at most: a share's partial sums, (kh*kw, M, OW*channels), stay in L2
        per_thread = max(1, -(-c // (64 * runtime.num_threads())))
        with runtime.compile_notice("dw_dw_nhwc", x.dtype.name):
            runtime.parallel_for(
                kernels.dw_dw_nhwc,
                -(-c // 8),
                x,
                dout,
                dwt,
                dbt,
                *stride,
                top,
                left,
                *dilation,
                kh,
                kw,
                per_thread=per_thread,
            )
        # dW[c*M + k, 0, i, j] = dwt[i*kw + j, k, c]; db[c*M + k] = dbt[k, c]
        dW = np.ascontiguousarray(dwt.transpose(2, 1, 0)).reshape(f, 1, kh, kw)
        return dx, dW, np.ascontiguousarray(dbt.T).reshape(f)
    oh, ow = dout.shape[2:]
    mh, pc = _phase_geometry((oh, ow), (kh, kw), stride, dilation)
    off = _tap_offsets(cg, (kh, kw), stride, dilation, mh, pc)
    dwt = np.empty((f, cg * kh * kw), dtype=x.dtype)
    db = np.empty(f, dtype=x.dtype)
    args = (x, dout, off, dwt, db, groups, *stride, top, left, mh, pc)
    with runtime.compile_notice("group_dw", x.dtype.name):
        runtime.parallel_for(kernels.group_dw, groups, *args, False)
        if np.isnan(dwt).any():  # maybe a non-finite x times a spill-over zero: the exact sums decide
            runtime.parallel_for(kernels.group_dw, groups, *args, True)
    return dx, dwt.reshape(W.shape), db
