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

Shared argument names: ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw`` dilation, ``oh_n, ow_n``
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
# Max pooling
# ----------------------------------------------------------------------------------------------


@cached_njit()
def _window_max(plane, h0, w0, kh, kw, dh, dw, ninf):  # pragma: no cover - jitted
    """Max and first argmax of the window at (h0, w0) of one (H, W) plane; -inf outside it, first NaN wins."""
    h_n, w_n = plane.shape
    best = ninf
    bi = 0
    for i in range(kh):
        h = h0 + i * dh
        for j in range(kw):
            # window element (i, j) = plane[h0 + i*dh, w0 + j*dw], or -inf in the padding
            w = w0 + j * dw
            v = plane[h, w] if (0 <= h < h_n and 0 <= w < w_n) else ninf
            if i + j == 0:
                best = v
            elif v > best or (v != v and best == best):
                best = v
                bi = i * kw + j
    return best, bi


@cached_njit(**_PLAIN)
def maxpool_forward(t0, t1, x, y, am, kh, kw, sh, sw, ph, pw, dh, dw, nan_aware):  # pragma: no cover - jitted
    """Fill y, am (N, C, OH, OW) from x (N, C, H, W): max and argmax; planes t0..t1-1 of the (image, channel) planes.

    argmax is the window-local index i*kw + j of the first maximum in row-major order; padding
    reads as -inf and a NaN counts as the maximum (the first NaN wins), as numpy.argmax does.
    ``nan_aware=False`` (the caller found no NaN in x): 2x2 and 3x3 windows (dilation 1) inside x
    take plain compares, written out; other windows, and every window when x holds a NaN, take the
    exact loop.
    """
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    ninf = x.dtype.type(-np.inf)
    # windows inside x: ow in [lo, hi), oh in [hlo, hhi)
    lo, hi = _valid_range(-pw, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-ph, sh, h_n - (kh - 1) * dh, oh_n)
    if nan_aware:
        hlo, hhi = 0, 0
    k22 = kh == 2 and kw == 2 and dh == 1 and dw == 1
    k33 = kh == 3 and kw == 3 and dh == 1 and dw == 1
    # Flat indices into x, y, am: with a view per row this serial loop took 2.8 ms on P1 against 1.5
    # (one thread; the backward below measured the other way round, 0.85 ms with row views, 2.5 flat).
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    af = am.reshape(am.size)
    for t in range(t0, t1):
        xb = t * h_n * w_n  # plane t = (n, c) of x, y, am
        yb = t * oh_n * ow_n
        plane = x[t // c_n, t % c_n]
        for oh in range(oh_n):
            # window (oh, ow) covers xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
            h0 = oh * sh - ph
            yo = yb + oh * ow_n
            a, b = (lo, hi) if hlo <= oh < hhi and (k22 or k33) else (0, 0)
            for ow in range(0, a):
                yf[yo + ow], af[yo + ow] = _window_max(plane, h0, ow * sw - pw, kh, kw, dh, dw, ninf)
            for ow in range(max(a, b), ow_n):
                yf[yo + ow], af[yo + ow] = _window_max(plane, h0, ow * sw - pw, kh, kw, dh, dw, ninf)
            if b <= a:
                continue
            # windows a..b lie inside x and x holds no NaN: plain compares, written out (an
            # unrolled-by-inlining version of this loop came back from numba's cache as slower code)
            r0 = xb + h0 * w_n - pw  # window (i, j) of (oh, ow) = xf[r0 + i*W + ow*sw + j]
            r1 = r0 + w_n
            if k22:
                for ow in range(a, b):
                    w0 = ow * sw
                    best = xf[r0 + w0]
                    bi = 0
                    v = xf[r0 + w0 + 1]
                    if v > best:
                        best, bi = v, 1
                    v = xf[r1 + w0]
                    if v > best:
                        best, bi = v, 2
                    v = xf[r1 + w0 + 1]
                    if v > best:
                        best, bi = v, 3
                    yf[yo + ow] = best
                    af[yo + ow] = bi
            else:
                r2 = r1 + w_n
                for ow in range(a, b):
                    w0 = ow * sw
                    best = xf[r0 + w0]
                    bi = 0
                    v = xf[r0 + w0 + 1]
                    if v > best:
                        best, bi = v, 1
                    v = xf[r0 + w0 + 2]
                    if v > best:
                        best, bi = v, 2
                    v = xf[r1 + w0]
                    if v > best:
                        best, bi = v, 3
                    v = xf[r1 + w0 + 1]
                    if v > best:
                        best, bi = v, 4
                    v = xf[r1 + w0 + 2]
                    if v > best:
                        best, bi = v, 5
                    v = xf[r2 + w0]
                    if v > best:
                        best, bi = v, 6
                    v = xf[r2 + w0 + 1]
                    if v > best:
                        best, bi = v, 7
                    v = xf[r2 + w0 + 2]
                    if v > best:
                        best, bi = v, 8
                    yf[yo + ow] = best
                    af[yo + ow] = bi


@cached_njit(**_PLAIN)
def maxpool_backward(
    t0, t1, dout, argmax, dx, gbits, dbits, kh, kw, sh, sw, ph, pw, dh, dw
):  # pragma: no cover
    """Write dx (N, C, H, W): each window's dout goes to the element its argmax names; planes t0..t1-1.

    ``gbits``, ``dbits`` are dout and dx viewed as same-size integers. 2x2 windows with stride 2
    that tile x exactly (no padding) take one branch-free pass that writes every element of dx
    once: the gradient's bits where the argmax points, masked to +0 elsewhere. Otherwise each plane
    of dx is zeroed and then accumulated in L1 (windows in output order, so overlapping windows sum
    deterministically); the argmax k = i*kw + j maps to a flat offset through a table.

    Returns how many argmax values lie outside [0, kh*kw): their windows are skipped, never written
    out of bounds, and the caller refuses the call.
    """
    n_n, c_n, oh_n, ow_n = dout.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    tiles = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
    tiles = tiles and h_n == 2 * oh_n and w_n == 2 * ow_n
    hw = h_n * w_n
    d = dx.reshape(n_n * c_n * hw)
    # k = i*kw + j -> flat offset i*dh*W + j*dw from the window origin
    off = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j] = i * dh * w_n + j * dw
    lo, hi = _valid_range(-pw, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-ph, sh, h_n - (kh - 1) * dh, oh_n)
    kk = kh * kw
    bad = 0
    for t in range(t0, t1):
        n = t // c_n
        c = t % c_n
        gp = dout[n, c]
        ap = argmax[n, c]
        if tiles:
            gb = gbits[n, c]
            dxb = dbits[n, c]
            for oh in range(oh_n):
                gr = gb[oh]
                ar = ap[oh]
                r0 = dxb[2 * oh]
                r1 = dxb[2 * oh + 1]
                for ow in range(ow_n):
                    # dx[n, c, 2*oh + i, 2*ow + j] = dout[n, c, oh, ow] if argmax == 2*i + j else +0
                    k = ar[ow]
                    if k < 0 or k > 3:
                        bad += 1
                    g = gr[ow]
                    r0[2 * ow] = g & -int(k == 0)
                    r0[2 * ow + 1] = g & -int(k == 1)
                    r1[2 * ow] = g & -int(k == 2)
                    r1[2 * ow + 1] = g & -int(k == 3)
            continue
        dp = d[t * hw : (t + 1) * hw]
        for q in range(hw):
            dp[q] = 0
        for oh in range(oh_n):
            gr = gp[oh]
            ar = ap[oh]
            h0 = oh * sh - ph
            a, b = (lo, hi) if hlo <= oh < hhi else (0, 0)
            for ow in range(ow_n):
                # dx[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += dout[n, c, oh, ow], k = argmax = i*kw + j
                k = ar[ow]
                if k < 0 or k >= kk:
                    bad += 1
                    continue
                if a <= ow < b:
                    dp[h0 * w_n + ow * sw - pw + off[k]] += gr[ow]
                    continue
                i = k // kw
                h = h0 + i * dh
                w = ow * sw - pw + (k - i * kw) * dw
                if 0 <= h < h_n and 0 <= w < w_n:
                    dp[h * w_n + w] += gr[ow]
    return bad
