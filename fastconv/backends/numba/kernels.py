"""The numba backend's compiled loops. ``ops.py`` allocates their outputs and calls them.

Every kernel is a plain ``@njit`` function, so ``NUMBA_DISABLE_JIT=1`` runs it as ordinary Python.
Each kernel does the work items ``t0 .. t1-1`` (an (image, channel) plane, an image) and
:func:`fastconv.backends.numba.runtime.parallel_for` runs disjoint shares of them on its threads:
no write races, and every sum is taken in one fixed order, so results are bitwise reproducible run
to run and for any thread count.

Kernels write into arrays the caller allocates with NumPy: NumPy asks the kernel for huge pages on
big arrays, while memory numba allocates is faulted in 4 KiB pages, which are slow in a virtual
machine (BENCHMARKS.md has the figures).

``cached_njit`` (:mod:`fastconv.backends.numba.runtime`) compiles into fastconv's per-user cache.

Shared argument names: ``sh, sw`` stride, ``ph, pw`` the top and left padding (the index math needs
no more: the bottom and right padding only set the output size), ``dh, dw`` dilation, ``oh_n, ow_n``
the output size from :func:`fastconv._shapes.conv_output_size` (the caller computes it once).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastconv.backends.numba.runtime import cached_njit

# Serial kernels over a share [t0, t1) of the work items, run by runtime.parallel_for from a thread
# pool (nogil): they compile 2-3x faster than parallel=True kernels and need no threading layer.
_PLAIN = {"nogil": True}


@njit
def _valid_range(j_off: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs o in [lo, hi) whose input index o*stride + j_off lies in [0, size)."""
    lo = 0
    if j_off < 0:
        lo = (-j_off + stride - 1) // stride
    hi = (size - 1 - j_off) // stride + 1 if size - 1 - j_off >= 0 else 0
    if hi > n_out:
        hi = n_out
    if hi < lo:
        hi = lo
    return lo, hi


# ----------------------------------------------------------------------------------------------
# im2col / col2im in the per-image layout (N, C*kh*kw, OH*OW) used by the GEMM convolution
# ----------------------------------------------------------------------------------------------


@cached_njit(**_PLAIN)
def im2col_planes(t0, t1, x, n0, col, wide, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):  # pragma: no cover
    """Fill col from images n0..n0+B of x (C-contiguous); planes t0..t1-1 of the (image, channel) planes.

    col is (B, K, OH*OW) (per-image layout), or (K, B, OH*OW) when ``wide`` (one GEMM for all B
    images), K >= C*kh*kw (rows past C*kh*kw are left alone). Flat indices throughout: slicing
    per output row cost more than the copy itself for short rows.
    """
    b_n = col.shape[1] if wide else col.shape[0]
    k_n = col.shape[0] if wide else col.shape[1]
    c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
    p_n = oh_n * ow_n
    p_c = col.shape[2]  # OH*OW, or OH*W in the flat layout
    xf = x.reshape(x.size)
    cf = col.reshape(col.size)
    for t in range(t0, t1):
        b = t // c_n
        c = t % c_n
        xb = ((n0 + b) * c_n + c) * h_n * w_n
        if p_c != p_n:
            # flat layout (stride 1, no padding or dilation): rows of pitch W, one contiguous copy per tap;
            # col[(c*kh + i)*kw + j, b, oh*W + w] = x[n0 + b, c, oh + i, w + j] (columns w >= OW unused)
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    cb = (r * b_n + b) * p_c if wide else (b * k_n + r) * p_c
                    m = min(p_c, h_n * w_n - i * w_n - j)
                    dst = cf[cb : cb + p_c]
                    src = xf[xb + i * w_n + j : xb + i * w_n + j + m]
                    for q in range(m):
                        dst[q] = src[q]
                    for q in range(m, p_c):
                        dst[q] = 0
            continue
        for i in range(kh):
            for j in range(kw):
                # col[b, (c*kh + i)*kw + j, oh*OW + ow] = xpad[n0 + b, c, oh*sh + i*dh, ow*sw + j*dw]
                r = (c * kh + i) * kw + j
                cb = (r * b_n + b) * p_n if wide else (b * k_n + r) * p_n
                w0 = j * dw - pw
                lo, hi = _valid_range(w0, sw, w_n, ow_n)
                for oh in range(oh_n):
                    h = oh * sh + i * dh - ph
                    o = cb + oh * ow_n
                    if h < 0 or h >= h_n or hi == lo:
                        for q in range(ow_n):
                            cf[o + q] = 0
                        continue
                    if lo > 0 or hi < ow_n:
                        for q in range(lo):
                            cf[o + q] = 0
                        for q in range(hi, ow_n):
                            cf[o + q] = 0
                    m = hi - lo
                    s0 = xb + h * w_n + lo * sw + w0
                    dst = cf[o + lo : o + hi]
                    if sw == 1:  # slices from 0: no negative-index test, a vector copy
                        src = xf[s0 : s0 + m]
                        for q in range(m):
                            dst[q] = src[q]
                    else:
                        src = xf[s0 : s0 + (m - 1) * sw + 1]
                        for q in range(m):
                            dst[q] = src[q * sw]


@cached_njit(**_PLAIN)
def col2im_planes(t0, t1, dcol, n0, dx, wide, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):  # pragma: no cover
    """Write dx[n0:n0+B] (C-contiguous) from dcol (B, C*kh*kw, OH*OW), or (C*kh*kw, B, OH*OW)
    when ``wide`` (C-contiguous); planes t0..t1-1, taps summed in order, flat indices."""
    b_n = dcol.shape[1] if wide else dcol.shape[0]
    k_n = dcol.shape[0] if wide else dcol.shape[1]
    c_n, h_n, w_n = dx.shape[1], dx.shape[2], dx.shape[3]
    p_n = oh_n * ow_n
    p_c = dcol.shape[2]  # OH*OW, or OH*W in the flat layout (see im2col_planes)
    df = dx.reshape(dx.size)
    cf = dcol.reshape(dcol.size)
    for t in range(t0, t1):
        b = t // c_n
        c = t % c_n
        p0 = ((n0 + b) * c_n + c) * h_n * w_n  # start of plane (n0 + b, c) in dx
        for q in range(h_n * w_n):
            df[p0 + q] = 0
        if p_c != p_n:
            # flat layout: dx[n0 + b, c, oh + i, w + j] += dcol[(c*kh + i)*kw + j, b, oh*W + w], one run per
            # tap; columns w >= OW hold W2d.T @ 0 = 0 (the caller zeroes dout there) and add nothing
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    cb = (r * b_n + b) * p_c if wide else (b * k_n + r) * p_c
                    m = min(p_c, h_n * w_n - i * w_n - j)
                    dst = df[p0 + i * w_n + j : p0 + i * w_n + j + m]
                    src = cf[cb : cb + m]
                    for q in range(m):
                        dst[q] += src[q]
            continue
        for i in range(kh):
            for j in range(kw):
                # dx[n0 + b, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += dcol[b, (c*kh + i)*kw + j, oh*OW + ow]
                r = (c * kh + i) * kw + j
                cb = (r * b_n + b) * p_n if wide else (b * k_n + r) * p_n
                w0 = j * dw - pw
                lo, hi = _valid_range(w0, sw, w_n, ow_n)
                if hi == lo:
                    continue
                for oh in range(oh_n):
                    h = oh * sh + i * dh - ph
                    if h < 0 or h >= h_n:
                        continue
                    m = hi - lo
                    s0 = cb + oh * ow_n + lo
                    d0 = p0 + h * w_n + lo * sw + w0
                    src = cf[s0 : s0 + m]
                    if sw == 1:  # slices from 0: no negative-index test, a vector add
                        dst = df[d0 : d0 + m]
                        for q in range(m):
                            dst[q] += src[q]
                    else:
                        dst = df[d0 : d0 + (m - 1) * sw + 1]
                        for q in range(m):
                            dst[q * sw] += src[q]


# ----------------------------------------------------------------------------------------------
# Grouped and depthwise direct convolution, NCHW: the phase-split layout
# ----------------------------------------------------------------------------------------------
#
# One input channel in the phase-split layout: xs[rh, rw, mh, v] = xpad[mh*sh + rh, v*sw + rw]
# (xpad: the plane shifted by (top, left) in zeros), MH rows of pitch PC (see direct.py's
# _phase_geometry). Tap (i, j) of output (oh, ow) then reads xs[(i*dh) % sh, (j*dw) % sw,
# oh + (i*dh)//sh, ow + (j*dw)//sw]: over the flat index q = oh*PC + ow every tap is one contiguous
# run whatever the stride or dilation, so the loops vectorise along the output rows. Columns
# ow >= OW of a row are spill-over: computed, never written out.


@njit
def _phase_fill(xs, base, plane, sh, sw, ph, pw, mh_n, pc):  # pragma: no cover - jitted
    """xs[base + ((rh*sw + rw)*MH + mh)*PC + v] = plane[mh*sh + rh - ph, v*sw + rw - pw], 0 outside the plane."""
    h_n, w_n = plane.shape
    zero = xs.dtype.type(0)
    for rh in range(sh):
        for rw in range(sw):
            lo, hi = _valid_range(rw - pw, sw, w_n, pc)
            w0 = lo * sw + rw - pw  # plane column of v = lo
            for mh in range(mh_n):
                o = base + ((rh * sw + rw) * mh_n + mh) * pc
                h = mh * sh + rh - ph
                dst = xs[o : o + pc]
                if h < 0 or h >= h_n or hi == lo:
                    for v in range(pc):
                        dst[v] = zero
                    continue
                for v in range(lo):
                    dst[v] = zero
                for v in range(hi, pc):
                    dst[v] = zero
                src = plane[h]
                d = dst[lo:hi]
                # a view from w0 (step sw): no negative-index test in the loop
                s = src[w0 : w0 + hi - lo] if sw == 1 else src[w0 : w0 + (hi - lo - 1) * sw + 1 : sw]
                for v in range(hi - lo):
                    d[v] = s[v]


@cached_njit(nogil=True, fastmath={"contract"})
def group_forward(t0, t1, x, w, bias, off, y, groups, sh, sw, ph, pw, mh_n, pc):  # pragma: no cover
    """y[n, f, oh, ow] = bias[f] + sum_{c<Cg, i, j} w[f, (c*kh + i)*kw + j] * x[n, g*Cg + c, oh*sh + i*dh - ph,
    ow*sw + j*dw - pw] (g = f // Fg, zero outside x), read as xs[off[(c*kh + i)*kw + j] + oh*PC + ow]
    in the phase-split layout; work items t0..t1-1 of the (image, group) pairs, 3 taps per pass."""
    c_n = x.shape[1]
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    cg = c_n // groups
    fg = f_n // groups
    kk = off.shape[0]
    cs = sh * sw * mh_n * pc  # one channel in xs
    m = (oh_n - 1) * pc + ow_n
    xs = np.empty(cg * cs, dtype=x.dtype)
    acc = np.empty(m, dtype=x.dtype)
    k3 = kk - kk % 3
    for t in range(t0, t1):
        n = t // groups
        g = t % groups
        for c in range(cg):
            _phase_fill(xs, c * cs, x[n, g * cg + c], sh, sw, ph, pw, mh_n, pc)
        for f in range(g * fg, (g + 1) * fg):
            wf = w[f]
            b = bias[f]
            if k3 == 0:
                for q in range(m):
                    acc[q] = b
            for u in range(0, k3, 3):
                w0, w1, w2 = wf[u], wf[u + 1], wf[u + 2]
                x0 = xs[off[u] : off[u] + m]
                x1 = xs[off[u + 1] : off[u + 1] + m]
                x2 = xs[off[u + 2] : off[u + 2] + m]
                if u == 0:  # the first pass writes acc, bias included
                    for q in range(m):
                        acc[q] = b + w0 * x0[q] + w1 * x1[q] + w2 * x2[q]
                else:
                    for q in range(m):
                        acc[q] += w0 * x0[q] + w1 * x1[q] + w2 * x2[q]
            for u in range(k3, kk):
                w0 = wf[u]
                x0 = xs[off[u] : off[u] + m]
                for q in range(m):
                    acc[q] += w0 * x0[q]
            yf = y[n, f]
            for oh in range(oh_n):  # y[n, f, oh, :] = acc[oh*PC : oh*PC + OW], the spill-over dropped
                yr = yf[oh]
                a = acc[oh * pc : oh * pc + ow_n]
                for ow in range(ow_n):
                    yr[ow] = a[ow]


@cached_njit(nogil=True, fastmath={"contract"})
def group_dx(t0, t1, dout, w, ptap, pshift, pstart, dx, groups, sh, sw, ph, pw, mh_n, pc):  # pragma: no cover
    """dx[n, g*Cg + c, h, w] = sum_{f of g, i, j} w[f, (c*kh + i)*kw + j] * dout[n, f, oh, ow] over the (oh, ow)
    with oh*sh + i*dh - ph = h, ow*sw + j*dw - pw = w: the adjoint of group_forward. Per channel, each
    phase plane p = rh*sw + rw of the phase-split layout is a correlation of dout with the taps of
    that phase, dxs[p, mh, v] = sum_t w[f, c*K + ptap[t]] * dout[n, f, mh - a_t, v - b_t], where
    pshift[t] = a_t*PC + b_t, taps pstart[p]..pstart[p+1]-1; dxs is then gathered into dx (positions of
    x no window reaches get 0). Work items t0..t1-1 of the (image, group) pairs, 3 taps per pass."""
    n_n, c_n, h_n, w_n = dx.shape
    f_n, oh_n, ow_n = dout.shape[1], dout.shape[2], dout.shape[3]
    cg = c_n // groups
    fg = f_n // groups
    kt = w.shape[1] // cg  # taps per channel
    nph = sh * sw
    pl = mh_n * pc
    cs = nph * pl
    front = (mh_n - oh_n) * pc + (pc - ow_n)  # the largest shift a_t*PC + b_t
    # dpb[front + oh*PC + ow] = dout[n, f, oh, ow], zero elsewhere (written once, so the zeros stay)
    dpb = np.zeros(front + pl, dtype=dout.dtype)
    dxs = np.empty(cg * cs, dtype=dout.dtype)
    zero = dout.dtype.type(0)
    # columns v in [los[rw], his[rw]) of phase rw land in x; full: every column of x is reached
    los = np.empty(sw, dtype=np.int64)
    his = np.empty(sw, dtype=np.int64)
    for rw in range(sw):
        los[rw], his[rw] = _valid_range(rw - pw, sw, w_n, pc)
    full = (w_n - 1 + pw) // sw < pc
    for t in range(t0, t1):
        n = t // groups
        g = t % groups
        for f in range(g * fg, (g + 1) * fg):
            src = dout[n, f]
            for oh in range(oh_n):
                d = dpb[front + oh * pc : front + oh * pc + ow_n]
                s = src[oh]
                for ow in range(ow_n):
                    d[ow] = s[ow]
            wf = w[f]
            first = f == g * fg
            for c in range(cg):
                for p in range(nph):
                    o = dxs[c * cs + p * pl : c * cs + (p + 1) * pl]
                    u0, u1 = pstart[p], pstart[p + 1]
                    if first and u0 == u1:
                        for q in range(pl):
                            o[q] = zero
                    u = u0
                    while u < u1:
                        init = first and u == u0
                        if u + 3 <= u1:
                            w0, w1, w2 = (
                                wf[c * kt + ptap[u]],
                                wf[c * kt + ptap[u + 1]],
                                wf[c * kt + ptap[u + 2]],
                            )
                            d0 = dpb[front - pshift[u] : front - pshift[u] + pl]
                            d1 = dpb[front - pshift[u + 1] : front - pshift[u + 1] + pl]
                            d2 = dpb[front - pshift[u + 2] : front - pshift[u + 2] + pl]
                            if init:
                                for q in range(pl):
                                    o[q] = w0 * d0[q] + w1 * d1[q] + w2 * d2[q]
                            else:
                                for q in range(pl):
                                    o[q] += w0 * d0[q] + w1 * d1[q] + w2 * d2[q]
                            u += 3
                        else:
                            w0 = wf[c * kt + ptap[u]]
                            d0 = dpb[front - pshift[u] : front - pshift[u] + pl]
                            if init:
                                for q in range(pl):
                                    o[q] = w0 * d0[q]
                            else:
                                for q in range(pl):
                                    o[q] += w0 * d0[q]
                            u += 1
        # dx[n, g*Cg + c, h, w] = dxs[c, rh, rw, mh, v] with h + ph = mh*sh + rh, w + pw = v*sw + rw
        # (the column bounds are computed once: per row they cost more than the copy itself)
        for c in range(cg):
            plane = dx[n, g * cg + c].reshape(h_n * w_n)
            for h in range(h_n):
                o = h * w_n
                mh = (h + ph) // sh
                if mh >= mh_n or not full:  # some of the row no window reaches
                    for q in range(w_n):
                        plane[o + q] = zero
                    if mh >= mh_n:
                        continue
                rh = h + ph - mh * sh
                for rw in range(sw):
                    sb = c * cs + ((rh * sw + rw) * mh_n + mh) * pc
                    lo, hi = los[rw], his[rw]
                    # views from 0 (dx's columns step sw): no negative-index test in the loop
                    d0 = o + lo * sw + rw - pw
                    dst = (
                        plane[d0 : d0 + hi - lo] if sw == 1 else plane[d0 : d0 + (hi - lo - 1) * sw + 1 : sw]
                    )
                    src = dxs[sb + lo : sb + hi]
                    for v in range(hi - lo):
                        dst[v] = src[v]


@cached_njit(nogil=True, fastmath={"contract", "reassoc"})
def group_dw(t0, t1, x, dout, off, dwt, db, groups, sh, sw, ph, pw, mh_n, pc, rows):  # pragma: no cover
    """dwt[f, (c*kh + i)*kw + j] = sum_{n, oh, ow} dout[n, f, oh, ow] * x[n, g*Cg + c, oh*sh + i*dh - ph,
    ow*sw + j*dw - pw] (read as xs[off[.] + oh*PC + ow], zero outside x), db[f] = sum dout[n, f]. Work
    items t0..t1-1 of the groups; each sums over the images in one fixed order, so the bits do not
    depend on the thread count. Each image's dot products run over the flat index q = oh*PC + ow with
    dout copied into dp[q] (zero in the spill-over columns), or, with ``rows``, row by row, never
    touching the spill-over: the caller reruns with ``rows`` when the flat sums hold a NaN, which a
    non-finite x in a spill-over column (times dp's zero) can make where the true sum has none."""
    n_n, c_n = x.shape[0], x.shape[1]
    f_n, oh_n, ow_n = dout.shape[1], dout.shape[2], dout.shape[3]
    cg = c_n // groups
    fg = f_n // groups
    kk = off.shape[0]
    cs = sh * sw * mh_n * pc
    m = (oh_n - 1) * pc + ow_n
    xs = np.empty(cg * cs, dtype=x.dtype)
    dp = np.zeros(m, dtype=x.dtype)  # dp[oh*PC + ow] = dout[n, f, oh, ow]; the spill-over stays zero
    k3 = kk - kk % 3
    zero = x.dtype.type(0)
    for g in range(t0, t1):
        for f in range(g * fg, (g + 1) * fg):
            db[f] = zero
            for u in range(kk):
                dwt[f, u] = zero
        for n in range(n_n):
            for c in range(cg):
                _phase_fill(xs, c * cs, x[n, g * cg + c], sh, sw, ph, pw, mh_n, pc)
            for f in range(g * fg, (g + 1) * fg):
                df = dout[n, f].reshape(oh_n * ow_n)
                wf = dwt[f]
                sb = zero
                for q in range(oh_n * ow_n):
                    sb += df[q]
                db[f] += sb
                if rows:
                    for u in range(kk):
                        s0 = zero
                        for oh in range(oh_n):
                            for ow in range(ow_n):
                                s0 += df[oh * ow_n + ow] * xs[off[u] + oh * pc + ow]
                        wf[u] += s0
                    continue
                for oh in range(oh_n):
                    d = dp[oh * pc : oh * pc + ow_n]
                    s = df[oh * ow_n : (oh + 1) * ow_n]
                    for ow in range(ow_n):
                        d[ow] = s[ow]
                for u in range(0, k3, 3):
                    x0 = xs[off[u] : off[u] + m]
                    x1 = xs[off[u + 1] : off[u + 1] + m]
                    x2 = xs[off[u + 2] : off[u + 2] + m]
                    s0 = zero
                    s1 = zero
                    s2 = zero
                    for q in range(m):
                        s0 += dp[q] * x0[q]
                        s1 += dp[q] * x1[q]
                        s2 += dp[q] * x2[q]
                    wf[u] += s0
                    wf[u + 1] += s1
                    wf[u + 2] += s2
                for u in range(k3, kk):
                    x0 = xs[off[u] : off[u] + m]
                    s0 = zero
                    for q in range(m):
                        s0 += dp[q] * x0[q]
                    wf[u] += s0


# ----------------------------------------------------------------------------------------------
# Depthwise convolution, NCHW, stride 1, multiplier 1 (groups == C == F): the flat plane
# ----------------------------------------------------------------------------------------------
# One (n, c) plane is copied into a zero-padded plane xp of ROWS = OH + (kh-1)*dh rows of pitch
# P = OW + (kw-1)*dw, flattened: tap (i, j) of every output is then the contiguous run
# xp[i*dh*P + j*dw :][: M], M = (OH-1)*P + OW, over the flat index q = oh*P + ow (columns ow >= OW
# of a row are spill-over: computed, never written out). dx (stride 1) is the same correlation on
# the zero-padded dout with the flipped kernel. The padding of xp is zeroed once per share: every
# plane of a call writes the same interior.


@njit
def _flat_fill(buf, plane, ph, pw, rows, pitch):  # pragma: no cover - jitted
    """buf[r*P + v] = plane[r - ph, v - pw] for the (r, v) inside the plane (ph, pw of any sign: a
    negative one crops); the rest of buf is left alone (the caller's zeros)."""
    h_n, w_n = plane.shape
    r0, r1 = max(0, ph), min(rows, h_n + ph)
    v0, v1 = max(0, pw), min(pitch, w_n + pw)
    for r in range(r0, r1):
        d = buf[r * pitch + v0 : r * pitch + v1]
        s = plane[r - ph, v0 - pw : v1 - pw]
        for q in range(v1 - v0):
            d[q] = s[q]


@njit(fastmath={"contract"})
def _flat_taps(acc, xp, off, wf, b, m):  # pragma: no cover - jitted
    """acc[q] = b + sum_u wf[u] * xp[off[u] + q], q < m, the taps added in order u = 0, 1, ...: all 9
    of a 3x3 kernel in one pass, else 3 per pass (the first pass writes acc)."""
    kk = off.shape[0]
    if kk == 9:
        o0, o1, o2, o3, o4, o5, o6, o7, o8 = (
            off[0],
            off[1],
            off[2],
            off[3],
            off[4],
            off[5],
            off[6],
            off[7],
            off[8],
        )
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = wf[0], wf[1], wf[2], wf[3], wf[4], wf[5], wf[6], wf[7], wf[8]
        x0, x1, x2 = xp[o0 : o0 + m], xp[o1 : o1 + m], xp[o2 : o2 + m]
        x3, x4, x5 = xp[o3 : o3 + m], xp[o4 : o4 + m], xp[o5 : o5 + m]
        x6, x7, x8 = xp[o6 : o6 + m], xp[o7 : o7 + m], xp[o8 : o8 + m]
        for q in range(m):
            acc[q] = (
                b + w0 * x0[q] + w1 * x1[q] + w2 * x2[q] + w3 * x3[q] + w4 * x4[q]
                + w5 * x5[q] + w6 * x6[q] + w7 * x7[q] + w8 * x8[q]
            )  # fmt: skip
        return
    u = 0
    while u < kk:
        e = min(kk, u + 3)
        if e - u == 3:
            w0, w1, w2 = wf[u], wf[u + 1], wf[u + 2]
            x0 = xp[off[u] : off[u] + m]
            x1 = xp[off[u + 1] : off[u + 1] + m]
            x2 = xp[off[u + 2] : off[u + 2] + m]
            if u == 0:
                for q in range(m):
                    acc[q] = b + w0 * x0[q] + w1 * x1[q] + w2 * x2[q]
            else:
                for q in range(m):
                    acc[q] += w0 * x0[q] + w1 * x1[q] + w2 * x2[q]
        else:  # the last 1 or 2 taps (or all of a kernel with fewer than 3), one per pass
            for v in range(u, e):
                w0 = wf[v]
                x0 = xp[off[v] : off[v] + m]
                if v == 0:
                    for q in range(m):
                        acc[q] = b + w0 * x0[q]
                else:
                    for q in range(m):
                        acc[q] += w0 * x0[q]
        u = e


@njit
def _flat_offsets(kh, kw, dh, dw, pitch):  # pragma: no cover - jitted
    """off[i*kw + j] = i*dh*P + j*dw: where tap (i, j) starts in a flat plane of pitch P."""
    off = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j] = i * dh * pitch + j * dw
    return off


@cached_njit(nogil=True, fastmath={"contract"})
def dw_flat_forward(t0, t1, x, w, bias, y, ph, pw, dh, dw, kh, kw):  # pragma: no cover
    """y[n, c, oh, ow] = bias[c] + sum_{i,j} w[c, i*kw + j] * x[n, c, oh + i*dh - ph, ow + j*dw - pw] (zero
    outside x; ph, pw of any sign), x (N, C, H, W), y (N, C, OH, OW): the stride-1 depthwise
    correlation on the flat plane xp[r*P + v] = x[n, c, r - ph, v - pw], P = OW + (kw-1)*dw,
    acc[oh*P + ow] = bias + sum_u w[c, u] * xp[off[u] + oh*P + ow]. Work items t0..t1-1: the (n, c)
    planes. Also dx: dout as x, the flipped kernel, ph = (kh-1)*dh - top, pw = (kw-1)*dw - left."""
    c_n = x.shape[1]
    oh_n, ow_n = y.shape[2], y.shape[3]
    pitch = ow_n + (kw - 1) * dw
    rows = oh_n + (kh - 1) * dh
    m = (oh_n - 1) * pitch + ow_n
    xp = np.zeros(rows * pitch, dtype=x.dtype)
    acc = np.empty(m, dtype=x.dtype)
    off = _flat_offsets(kh, kw, dh, dw, pitch)
    for t in range(t0, t1):
        n = t // c_n
        c = t % c_n
        _flat_fill(xp, x[n, c], ph, pw, rows, pitch)
        _flat_taps(acc, xp, off, w[c], bias[c], m)
        yf = y[n, c]
        for oh in range(oh_n):  # y[n, c, oh, :] = acc[oh*P : oh*P + OW], the spill-over dropped
            yr = yf[oh]
            a = acc[oh * pitch : oh * pitch + ow_n]
            for ow in range(ow_n):
                yr[ow] = a[ow]


@cached_njit(nogil=True, fastmath={"contract", "reassoc"})
def dw_flat_backward(t0, t1, x, dout, wfl, dx, dwt, db, ph, pw, dh, dw, kh, kw, need_dx):  # pragma: no cover
    """The stride-1 depthwise (multiplier 1) backward, x (N, C, H, W), dout (N, C, OH, OW), per channel c:
    dp[r*P + v] = dout[n, c, r - a, v - e] (a = (kh-1)*dh - ph, e = (kw-1)*dw - pw, zero outside dout),
    P = W + (kw-1)*dw; dx[n, c, h, w] = sum_u wfl[c, u] * dp[off[u] + h*P + w] (wfl: the flipped kernel,
    as dw_flat_forward's _flat_taps) when ``need_dx``; dwt[c, kk-1-u] = sum_{n, q} xq[q] * dp[off[u] + q]
    with xq[h*P + w] = x[n, c, h, w] (zero in the spill-over), i.e. dW[c, i, j] = sum dout[n, c, oh, ow]
    * x[n, c, oh + i*dh - ph, ow + j*dw - pw]; db[c] = sum dout[n, c]. Work items t0..t1-1: channels,
    each summing over the images in order n = 0, 1, ...: the same bits for any thread count. A
    non-finite value times a zero of the padding or spill-over can make a NaN the true sum lacks: the
    caller then recomputes dW exactly (kernels.group_dw with ``rows``)."""
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = dout.shape[2], dout.shape[3]
    a = (kh - 1) * dh - ph
    e = (kw - 1) * dw - pw
    pitch = w_n + (kw - 1) * dw
    rows = h_n + (kh - 1) * dh
    kk = kh * kw
    m = (h_n - 1) * pitch + w_n
    dp = np.zeros(rows * pitch, dtype=x.dtype)
    xq = np.zeros(m, dtype=x.dtype)
    acc = np.empty(m, dtype=x.dtype)
    s = np.empty(kk, dtype=x.dtype)
    off = _flat_offsets(kh, kw, dh, dw, pitch)
    k3 = kk - kk % 3
    zero = x.dtype.type(0)
    for c in range(t0, t1):
        for u in range(kk):
            s[u] = zero
        sb = zero
        for n in range(n_n):
            _flat_fill(dp, dout[n, c], a, e, rows, pitch)
            if need_dx:
                _flat_taps(acc, dp, off, wfl[c], zero, m)
                df = dx[n, c]
                for h in range(h_n):  # dx[n, c, h, :] = acc[h*P : h*P + W]
                    dr = df[h]
                    ar = acc[h * pitch : h * pitch + w_n]
                    for w in range(w_n):
                        dr[w] = ar[w]
            _flat_fill(xq, x[n, c], 0, 0, h_n, pitch)
            if kk == 9:
                o0, o1, o2, o3, o4 = off[0], off[1], off[2], off[3], off[4]
                o5, o6, o7, o8 = off[5], off[6], off[7], off[8]
                d0, d1, d2 = dp[o0 : o0 + m], dp[o1 : o1 + m], dp[o2 : o2 + m]
                d3, d4, d5 = dp[o3 : o3 + m], dp[o4 : o4 + m], dp[o5 : o5 + m]
                d6, d7, d8 = dp[o6 : o6 + m], dp[o7 : o7 + m], dp[o8 : o8 + m]
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
                for q in range(m):
                    v = xq[q]
                    s0 += v * d0[q]
                    s1 += v * d1[q]
                    s2 += v * d2[q]
                    s3 += v * d3[q]
                    s4 += v * d4[q]
                    s5 += v * d5[q]
                    s6 += v * d6[q]
                    s7 += v * d7[q]
                    s8 += v * d8[q]
                s[0] += s0
                s[1] += s1
                s[2] += s2
                s[3] += s3
                s[4] += s4
                s[5] += s5
                s[6] += s6
                s[7] += s7
                s[8] += s8
            else:
                for u in range(0, k3, 3):
                    d0 = dp[off[u] : off[u] + m]
                    d1 = dp[off[u + 1] : off[u + 1] + m]
                    d2 = dp[off[u + 2] : off[u + 2] + m]
                    s0 = s1 = s2 = zero
                    for q in range(m):
                        v = xq[q]
                        s0 += v * d0[q]
                        s1 += v * d1[q]
                        s2 += v * d2[q]
                    s[u] += s0
                    s[u + 1] += s1
                    s[u + 2] += s2
                for u in range(k3, kk):
                    d0 = dp[off[u] : off[u] + m]
                    s0 = zero
                    for q in range(m):
                        s0 += xq[q] * d0[q]
                    s[u] += s0
            src = dout[n, c].reshape(oh_n * ow_n)
            sn = zero
            for q in range(oh_n * ow_n):
                sn += src[q]
            sb += sn
        for u in range(kk):
            dwt[c, kk - 1 - u] = s[u]
        db[c] = sb


# ----------------------------------------------------------------------------------------------
# Depthwise direct convolution, NHWC (Cg == 1, any multiplier M = Fg): vectors along (ow, c)
# ----------------------------------------------------------------------------------------------
# Rows of x are copied zero-padded and split by column phase, xq[r, rw, v*C + c] = xpad[r, v*sw + rw, c]
# (PV = OW + (kw-1)*dw // sw columns per phase), so that tap j of the outputs ow = 0..OW-1 of a row
# reads one contiguous run xq[r, (j*dw) % sw, ((j*dw)//sw)*C :][: OW*C], whatever the stride. The
# weights come tiled along the row, wq[i*kw + j, k, ow*C + c] = W[c*M + k, 0, i, j], and every inner
# loop runs over the OW*C values of a row (long vector loops, no per-pixel views).


@njit
def _fill_phase_row(xq, r, src, ok, sw, pw, c_n, pv):  # pragma: no cover - jitted
    """xq[r, rw, v*C + c] = src[(v*sw + rw - pw)*C + c] (src: one row of x, W*C values), zero outside the
    row or when not ``ok`` (a row of the padding)."""
    w_n = src.shape[0] // c_n
    zero = xq.dtype.type(0)
    for rw in range(sw):
        dst = xq[r, rw]
        if not ok:
            for q in range(pv * c_n):
                dst[q] = zero
            continue
        lo, hi = _valid_range(rw - pw, sw, w_n, pv)
        for q in range(lo * c_n):
            dst[q] = zero
        for q in range(hi * c_n, pv * c_n):
            dst[q] = zero
        if sw == 1:  # one contiguous copy of the row
            d = dst[lo * c_n : hi * c_n]
            s = src[(lo - pw) * c_n : (hi - pw) * c_n]
            for q in range((hi - lo) * c_n):
                d[q] = s[q]
        else:
            for v in range(lo, hi):
                d = dst[v * c_n : (v + 1) * c_n]
                s = src[(v * sw + rw - pw) * c_n : (v * sw + rw - pw + 1) * c_n]
                for c in range(c_n):
                    d[c] = s[c]


@cached_njit(nogil=True, fastmath={"contract"})
def dw_forward_nhwc(t0, t1, x, wq, bq, y, nb, sh, sw, ph, pw, dh, dw, kh, kw):  # pragma: no cover
    """y[n, oh, ow, c*M + k] = b[c*M + k] + sum_{i,j} W[c*M + k, 0, i, j] * x[n, oh*sh + i*dh - ph, ow*sw + j*dw - pw, c]
    (zero outside x), with wq (kh*kw, M, OW*C) the tiled weights and bq (M, OW*C) the tiled bias; x
    (N, H, W, C), y (N, OH, OW, C*M). Work items t0..t1-1 of (image, block of output rows), nb blocks
    per image; each copies its input rows into xq, then 3 taps per pass along the row."""
    h_n, w_n, c_n = x.shape[1], x.shape[2], x.shape[3]
    oh_n, ow_n = y.shape[1], y.shape[2]
    mm = wq.shape[1]
    rb = (oh_n + nb - 1) // nb
    pv = ow_n + (kw - 1) * dw // sw
    L = ow_n * c_n
    xq = np.empty(((rb - 1) * sh + (kh - 1) * dh + 1, sw, pv * c_n), dtype=x.dtype)
    acc = np.empty((mm, L), dtype=x.dtype)
    kw3 = kw - kw % 3
    for t in range(t0, t1):
        n = t // nb
        r0 = (t % nb) * rb
        r1 = min(oh_n, r0 + rb)
        if r0 >= r1:
            continue
        for r in range((r1 - 1 - r0) * sh + (kh - 1) * dh + 1):
            h = r0 * sh + r - ph
            ok = 0 <= h < h_n
            _fill_phase_row(xq, r, x[n, min(max(h, 0), h_n - 1)].reshape(w_n * c_n), ok, sw, pw, c_n, pv)
        for oh in range(r0, r1):
            for k in range(mm):
                a = y[n, oh].reshape(L) if mm == 1 else acc[k]  # with M = 1, y's row itself
                b = bq[k]
                for q in range(L):
                    a[q] = b[q]
                for i in range(kh):
                    r = (oh - r0) * sh + i * dh
                    for j in range(0, kw3, 3):
                        e0, e1, e2 = j * dw, (j + 1) * dw, (j + 2) * dw
                        x0 = xq[r, e0 % sw, (e0 // sw) * c_n : (e0 // sw) * c_n + L]
                        x1 = xq[r, e1 % sw, (e1 // sw) * c_n : (e1 // sw) * c_n + L]
                        x2 = xq[r, e2 % sw, (e2 // sw) * c_n : (e2 // sw) * c_n + L]
                        w0, w1, w2 = wq[i * kw + j, k], wq[i * kw + j + 1, k], wq[i * kw + j + 2, k]
                        for q in range(L):
                            a[q] += w0[q] * x0[q] + w1[q] * x1[q] + w2[q] * x2[q]
                    for j in range(kw3, kw):
                        e0 = j * dw
                        x0 = xq[r, e0 % sw, (e0 // sw) * c_n : (e0 // sw) * c_n + L]
                        w0 = wq[i * kw + j, k]
                        for q in range(L):
                            a[q] += w0[q] * x0[q]
            if mm > 1:  # y[n, oh, ow, c*M + k] = acc[k, ow*C + c]
                yr = y[n, oh]
                for ow in range(ow_n):
                    for k in range(mm):
                        ak = acc[k, ow * c_n : (ow + 1) * c_n]
                        for c in range(c_n):
                            yr[ow, c * mm + k] = ak[c]


@njit
def _dout_row(dr, src, mm, c_n):  # pragma: no cover - jitted
    """dr[k, ow*C + c] = src[ow, c*M + k] (one row of dout, channels regrouped by multiplier k)."""
    ow_n = src.shape[0]
    for ow in range(ow_n):
        for k in range(mm):
            d = dr[k]
            for c in range(c_n):
                d[ow * c_n + c] = src[ow, c * mm + k]


@cached_njit(nogil=True, fastmath={"contract"})
def dw_dx_nhwc(t0, t1, dout, wq, dx, sh, sw, ph, pw, dh, dw, kh, kw):  # pragma: no cover
    """dx[n, h, w, c] = sum_{k, i, j} W[c*M + k, 0, i, j] * dout[n, oh, ow, c*M + k] over the (oh, ow) with
    oh*sh + i*dh - ph = h, ow*sw + j*dw - pw = w: scattered, one tap per pass along a row of dout,
    into the zero-padded, phase-split image xq[hp, wp % sw, (wp // sw)*C + c] (hp = h + ph, wp = w + pw)
    in (oh, i, j, k) order, then gathered into dx. Work items t0..t1-1: images."""
    h_n, w_n, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    mm = wq.shape[1]
    L = ow_n * c_n
    hp = (oh_n - 1) * sh + (kh - 1) * dh + 1
    pv = ow_n + (kw - 1) * dw // sw
    xq = np.empty((hp, sw, pv * c_n), dtype=dout.dtype)
    dr = np.empty((mm, L), dtype=dout.dtype)
    zero = dout.dtype.type(0)
    for n in range(t0, t1):
        xf = xq.reshape(xq.size)
        for q in range(xq.size):
            xf[q] = zero
        for oh in range(oh_n):
            if mm == 1:
                d = dout[n, oh].reshape(1, L)
            else:
                _dout_row(dr, dout[n, oh], mm, c_n)
                d = dr
            for i in range(kh):
                r = oh * sh + i * dh
                for j in range(kw):
                    e0 = j * dw
                    dst = xq[r, e0 % sw, (e0 // sw) * c_n : (e0 // sw) * c_n + L]
                    for k in range(mm):
                        w0 = wq[i * kw + j, k]
                        dk = d[k]
                        for q in range(L):
                            dst[q] += w0[q] * dk[q]
        for h in range(h_n):
            row = dx[n, h].reshape(w_n * c_n)
            r = h + ph
            for w in range(w_n):
                # dx[n, h, w, :] = xq[h + ph, (w + pw) % sw, ((w + pw)//sw)*C :][: C], 0 where no window reaches
                v = (w + pw) // sw
                d = row[w * c_n : (w + 1) * c_n]
                if r >= hp or v >= pv:
                    for c in range(c_n):
                        d[c] = zero
                else:
                    s = xq[r, (w + pw) % sw, v * c_n : (v + 1) * c_n]
                    for c in range(c_n):
                        d[c] = s[c]


@cached_njit(nogil=True, fastmath={"contract"})
def dw_dw_nhwc(t0, t1, x, dout, dwt, db, sh, sw, ph, pw, dh, dw, kh, kw):  # pragma: no cover
    """dwt[i*kw + j, k, c] = sum_{n, oh, ow} dout[n, oh, ow, c*M + k] * x[n, oh*sh + i*dh - ph, ow*sw + j*dw - pw, c]
    (zero outside x), db[k, c] = sum dout[n, oh, ow, c*M + k]. Work items t0..t1-1: blocks of 8 channels
    (a share's blocks run as one block c0..c1, CB channels). Partial sums per (ow, c) lane,
    acc[i*kw + j, k, ow*CB + c], summed over (n, oh) in order, then over ow: every channel's sum takes
    the same order however the channels are shared among threads, so the bits do not depend on it."""
    n_n, h_n, w_n, c_n = x.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    mm = dwt.shape[1]
    kk = kh * kw
    c0 = t0 * 8
    c1 = min(c_n, t1 * 8)
    cb = c1 - c0
    L = ow_n * cb
    pv = ow_n + (kw - 1) * dw // sw
    hp = (oh_n - 1) * sh + (kh - 1) * dh + 1
    xq = np.empty((hp, sw, pv * cb), dtype=x.dtype)
    xrow = np.empty(w_n * cb, dtype=x.dtype)  # one row of x, channels c0..c1
    acc = np.zeros((kk, mm, L), dtype=x.dtype)
    dacc = np.zeros((mm, L), dtype=x.dtype)
    dr = np.empty((mm, L), dtype=x.dtype)
    for n in range(n_n):
        for r in range(hp):
            h = r - ph
            ok = 0 <= h < h_n
            if ok:
                for w in range(w_n):
                    s = x[n, h, w, c0:c1]
                    d = xrow[w * cb : (w + 1) * cb]
                    for c in range(cb):
                        d[c] = s[c]
            _fill_phase_row(xq, r, xrow, ok, sw, pw, cb, pv)
        for oh in range(oh_n):
            src = dout[n, oh]
            for ow in range(ow_n):  # dr[k, ow*CB + c] = dout[n, oh, ow, (c0 + c)*M + k]
                for k in range(mm):
                    for c in range(cb):
                        dr[k, ow * cb + c] = src[ow, (c0 + c) * mm + k]
            for k in range(mm):
                a = dacc[k]
                d = dr[k]
                for q in range(L):
                    a[q] += d[q]
            for i in range(kh):
                r = oh * sh + i * dh
                for j in range(kw):
                    e0 = j * dw
                    xv = xq[r, e0 % sw, (e0 // sw) * cb : (e0 // sw) * cb + L]
                    for k in range(mm):
                        a = acc[i * kw + j, k]
                        d = dr[k]
                        for q in range(L):
                            a[q] += d[q] * xv[q]
    for u in range(kk):
        for k in range(mm):
            for c in range(cb):
                s = acc[u, k, c]
                for ow in range(1, ow_n):
                    s += acc[u, k, ow * cb + c]
                dwt[u, k, c0 + c] = s
    for k in range(mm):
        for c in range(cb):
            s = dacc[k, c]
            for ow in range(1, ow_n):
                s += dacc[k, ow * cb + c]
            db[k, c0 + c] = s


# ----------------------------------------------------------------------------------------------
# im2col / col2im in the NHWC layout (the NHWC GEMM convolution)
# ----------------------------------------------------------------------------------------------


@cached_njit(**_PLAIN)
def im2col_nhwc(t0, t1, x, n0, col, sh, sw, ph, pw, dh, dw, kh, kw, oh_n, ow_n):  # pragma: no cover
    """col[(b*OH + oh)*OW + ow, (i*kw + j)*C + c] = x[n0 + b, oh*sh + i*dh - ph, ow*sw + j*dw - pw, c] (zero
    outside x): each tap one contiguous copy of C values, or with dw == 1 and the window's row inside
    x, one copy of kw*C values per window row (few channels make per-tap copies too short); columns
    past kh*kw*C are left alone. Flat indices (a view per row of x costs more than a short copy).
    Work items t0..t1-1 of the (image b, output row oh) pairs."""
    h_n, w_n, c_n = x.shape[1], x.shape[2], x.shape[3]
    k1 = col.shape[1]
    xf = x.reshape(x.size)
    cf = col.reshape(col.size)
    zero = x.dtype.type(0)
    run = kw * c_n
    for t in range(t0, t1):
        b = t // oh_n
        oh = t % oh_n
        xb = (n0 + b) * h_n * w_n * c_n
        for ow in range(ow_n):
            o = ((b * oh_n + oh) * ow_n + ow) * k1
            w0 = ow * sw - pw
            inside = dw == 1 and w0 >= 0 and w0 + kw <= w_n
            for i in range(kh):
                h = oh * sh + i * dh - ph
                if inside and 0 <= h < h_n:
                    s0 = xb + (h * w_n + w0) * c_n
                    dst = cf[o + i * run : o + (i + 1) * run]
                    src = xf[s0 : s0 + run]
                    for q in range(run):
                        dst[q] = src[q]
                    continue
                for j in range(kw):
                    w = w0 + j * dw
                    dst = cf[o + (i * kw + j) * c_n : o + (i * kw + j + 1) * c_n]
                    if h < 0 or h >= h_n or w < 0 or w >= w_n:
                        for c in range(c_n):
                            dst[c] = zero
                    else:
                        s0 = xb + (h * w_n + w) * c_n
                        src = xf[s0 : s0 + c_n]
                        for c in range(c_n):
                            dst[c] = src[c]


@cached_njit(**_PLAIN)
def col2im_nhwc(t0, t1, dcol, n0, dx, sh, sw, ph, pw, dh, dw, kh, kw, oh_n, ow_n):  # pragma: no cover
    """dx[n0 + b, h, w, c] = sum of dcol[(b*OH + oh)*OW + ow, (i*kw + j)*C + c] over the (oh, ow, i, j) with
    oh*sh + i*dh - ph = h, ow*sw + j*dw - pw = w (the adjoint of im2col_nhwc), added in that order
    (with dw == 1 and the window's row inside dx, one run of kw*C adds per window row). Flat indices.
    Work items t0..t1-1: images b."""
    h_n, w_n, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    k1 = dcol.shape[1]
    df = dx.reshape(dx.size)
    cf = dcol.reshape(dcol.size)
    zero = dx.dtype.type(0)
    run = kw * c_n
    for b in range(t0, t1):
        xb = (n0 + b) * h_n * w_n * c_n
        img = df[xb : xb + h_n * w_n * c_n]
        for q in range(h_n * w_n * c_n):
            img[q] = zero
        for oh in range(oh_n):
            for ow in range(ow_n):
                o = ((b * oh_n + oh) * ow_n + ow) * k1
                w0 = ow * sw - pw
                inside = dw == 1 and w0 >= 0 and w0 + kw <= w_n
                for i in range(kh):
                    h = oh * sh + i * dh - ph
                    if h < 0 or h >= h_n:
                        continue
                    if inside:
                        dst = img[(h * w_n + w0) * c_n : (h * w_n + w0) * c_n + run]
                        src = cf[o + i * run : o + (i + 1) * run]
                        for q in range(run):
                            dst[q] += src[q]
                        continue
                    for j in range(kw):
                        w = w0 + j * dw
                        if w < 0 or w >= w_n:
                            continue
                        dst = img[(h * w_n + w) * c_n : (h * w_n + w + 1) * c_n]
                        src = cf[o + (i * kw + j) * c_n : o + (i * kw + j + 1) * c_n]
                        for c in range(c_n):
                            dst[c] += src[c]
