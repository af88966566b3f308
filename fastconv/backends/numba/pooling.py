"""The numba backend's pooling: max and average pooling, forward and backward, NCHW and NHWC.

Contract v2 (:mod:`fastconv.backends`): ``pad`` is ``(top, bottom, left, right)``, the output size
``out_hw`` comes from the caller (ceil mode makes it one larger than the floor formula), and
``layout`` is ``"NCHW"`` or ``"NHWC"``.

How each kernel runs (every kernel is serial and ``nogil`` over a share ``[t0, t1)`` of its work
items, run by :func:`fastconv.backends.numba.runtime.parallel_for`; every sum has one fixed order,
so results are bitwise the same for any thread count):

* max pool, NCHW: one (image, channel) plane per work item, one pass for the value and the argmax,
  2x2 and 3x3 windows inside x written out (a NumPy pass over x first decides whether NaNs need
  the exact loop). Backward: 2x2/2 tilings in one branch-free pass of bit masks,
  otherwise each plane zeroed and then accumulated through the argmax in window order.
* max pool, NHWC: one output row (image, oh) per work item; each window element updates a whole
  channel vector (innermost loop over the contiguous channels, compare-and-select), which is how
  a channels-last pool vectorises. Backward: one input row (image, h) per work item gathers, for
  each input pixel, the windows that contain it in window order, again a channel vector at a time;
  the order of the additions is that of the NCHW scatter, so both layouts give the same bits.
  The NaN test (a NaN counts as the maximum) is part of the select.
* average pool, both layouts: a window's sum is the sum over its columns of the column sums over
  its rows, times 1/divisor. NCHW: one plane per work item, the column sums of an output row a
  vector add of x's rows; NHWC: one output row per work item, 2x2 and 3x3 windows inside x
  written out a channel vector at a time. The backward spreads dout * (1/divisor) over each output
  row's columns and sums those over the output rows that cover an input row (NCHW, per plane), or
  gathers that same sum per input pixel (NHWC, per input row). A window covering the whole plane
  (global average pooling) is a plain sum in flat order, several planes at a time in NCHW. NCHW
  and NHWC add in the same order and give the same bits.

Inner loops index views by the loop counter: with computed flat offsets (``xf[base + c]``) numba's
negative-index handling keeps a loop from vectorising; the NCHW max-pool kernel's loops are scalar
anyway (its rows are shorter than a vector) and keep flat indices, where views per row cost more. Kernels write into arrays NumPy allocates (see :mod:`fastconv.backends.numba.kernels`).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from fastconv._shapes import bad_argmax_error
from fastconv.backends.numba import runtime
from fastconv.backends.numba.kernels import _valid_range
from fastconv.backends.numba.runtime import cached_njit

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]

# Serial kernels over a share [t0, t1) of the work items, run by runtime.parallel_for (see kernels.py).
_PLAIN = {"nogil": True}


# ----------------------------------------------------------------------------------------------
# Max pooling, NCHW
# ----------------------------------------------------------------------------------------------


@njit
def _window_max(plane, h0, w0, kh, kw, dh, dw, ninf):  # pragma: no cover - jitted
    """Max and first argmax of the window at (h0, w0) of one (H, W) plane: positions outside the
    plane are skipped (they read as -inf and never win), the first NaN wins."""
    h_n, w_n = plane.shape
    best = ninf
    bi = -1
    for i in range(kh):
        h = h0 + i * dh
        if h < 0 or h >= h_n:
            continue
        for j in range(kw):
            # window element (i, j) = plane[h0 + i*dh, w0 + j*dw]
            w = w0 + j * dw
            if w < 0 or w >= w_n:
                continue
            v = plane[h, w]
            if bi < 0 or v > best or (v != v and best == best):
                best = v
                bi = i * kw + j
    return best, bi


@cached_njit(**_PLAIN)
def maxpool_forward_nchw(t0, t1, x, y, am, kh, kw, sh, sw, top, left, dh, dw, nan_aware):  # pragma: no cover
    """Fill y, am (N, C, OH, OW) from x (N, C, H, W): max and argmax; planes t0..t1-1 of the (image, channel) planes.

    argmax is the window-local index i*kw + j of the first maximum in row-major order; positions
    outside x never win and a NaN counts as the maximum (the first NaN wins), as numpy.argmax does.
    ``nan_aware=False`` (the caller found no NaN in x): 2x2 and 3x3 windows (dilation 1) inside x
    take plain compares, written out; other windows, and every window when x holds a NaN, take the
    exact loop.
    """
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    ninf = x.dtype.type(-np.inf)
    # windows inside x: ow in [lo, hi), oh in [hlo, hhi)
    lo, hi = _valid_range(-left, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-top, sh, h_n - (kh - 1) * dh, oh_n)
    if nan_aware:
        hlo, hhi = 0, 0
    k22 = kh == 2 and kw == 2 and dh == 1 and dw == 1
    k33 = kh == 3 and kw == 3 and dh == 1 and dw == 1
    # Flat indices into x, y, am: a view per row made this serial loop slower (the backward measured
    # the other way round). Vectorising along an output row does not pay: rows are shorter than a
    # vector of float32 (the NHWC kernel vectorises over the channels instead).
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    af = am.reshape(am.size)
    for t in range(t0, t1):
        xb = t * h_n * w_n  # plane t = (n, c) of x, y, am
        yb = t * oh_n * ow_n
        plane = x[t // c_n, t % c_n]
        for oh in range(oh_n):
            # window (oh, ow) covers x[n, c, oh*sh - top + i*dh, ow*sw - left + j*dw]
            h0 = oh * sh - top
            yo = yb + oh * ow_n
            a, b = (lo, hi) if hlo <= oh < hhi and (k22 or k33) else (0, 0)
            for ow in range(0, a):
                yf[yo + ow], af[yo + ow] = _window_max(plane, h0, ow * sw - left, kh, kw, dh, dw, ninf)
            for ow in range(max(a, b), ow_n):
                yf[yo + ow], af[yo + ow] = _window_max(plane, h0, ow * sw - left, kh, kw, dh, dw, ninf)
            if b <= a:
                continue
            # windows a..b lie inside x and x holds no NaN: plain compares, written out (an
            # unrolled-by-inlining version of this loop came back from numba's cache as slower code)
            r0 = xb + h0 * w_n - left  # window (i, j) of (oh, ow) = xf[r0 + i*W + ow*sw + j]
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
def maxpool_backward_nchw(
    t0, t1, dout, argmax, dx, gbits, dbits, kh, kw, sh, sw, top, left, dh, dw
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
    tiles = kh == 2 and kw == 2 and sh == 2 and sw == 2 and top == 0 and left == 0 and dh == 1 and dw == 1
    tiles = tiles and h_n == 2 * oh_n and w_n == 2 * ow_n
    hw = h_n * w_n
    d = dx.reshape(n_n * c_n * hw)
    # k = i*kw + j -> flat offset i*dh*W + j*dw from the window origin
    off = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j] = i * dh * w_n + j * dw
    lo, hi = _valid_range(-left, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-top, sh, h_n - (kh - 1) * dh, oh_n)
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
            h0 = oh * sh - top
            a, b = (lo, hi) if hlo <= oh < hhi else (0, 0)
            for ow in range(ow_n):
                # dx[n, c, oh*sh + i*dh - top, ow*sw + j*dw - left] += dout[n, c, oh, ow], k = argmax = i*kw + j
                k = ar[ow]
                if k < 0 or k >= kk:
                    bad += 1
                    continue
                if a <= ow < b:
                    dp[h0 * w_n + ow * sw - left + off[k]] += gr[ow]
                    continue
                i = k // kw
                h = h0 + i * dh
                w = ow * sw - left + (k - i * kw) * dw
                if 0 <= h < h_n and 0 <= w < w_n:
                    dp[h * w_n + w] += gr[ow]
    return bad


# ----------------------------------------------------------------------------------------------
# Max pooling, NHWC
# ----------------------------------------------------------------------------------------------


@cached_njit(**_PLAIN)
def maxpool_forward_nhwc(t0, t1, x, y, am, kh, kw, sh, sw, top, left, dh, dw):  # pragma: no cover
    """Fill y, am (N, OH, OW, C) from x (N, H, W, C); output rows t0..t1-1 of the (image, oh) rows.

    Same argmax as the NCHW kernel (first maximum in row-major window order, positions outside x
    skipped, the first NaN wins); each window element updates the whole channel vector with a
    compare-and-select, so the innermost loop runs over contiguous channels.
    """
    n_n, h_n, w_n, c_n = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for t in range(t0, t1):
        n = t // oh_n
        oh = t % oh_n
        h0 = oh * sh - top
        for ow in range(ow_n):
            # window (oh, ow) covers x[n, oh*sh - top + i*dh, ow*sw - left + j*dw, :]
            w0 = ow * sw - left
            yr = y[n, oh, ow]
            ar = am[n, oh, ow]
            first = True
            for i in range(kh):
                h = h0 + i * dh
                if h < 0 or h >= h_n:
                    continue
                for j in range(kw):
                    w = w0 + j * dw
                    if w < 0 or w >= w_n:
                        continue
                    xr = x[n, h, w]
                    k = i * kw + j
                    if first:
                        first = False
                        for c in range(c_n):
                            yr[c] = xr[c]
                            ar[c] = k
                    else:
                        for c in range(c_n):
                            v = xr[c]
                            b = yr[c]
                            take = (v > b) | ((v != v) & (b == b))
                            yr[c] = v if take else b
                            ar[c] = k if take else ar[c]


@cached_njit(**_PLAIN)
def maxpool_backward_nhwc(
    t0, t1, dout, argmax, dx, kh, kw, sh, sw, top, left, dh, dw, ohlo, ohhi, owlo, owhi
):  # pragma: no cover
    """Write dx (N, H, W, C) rows t0..t1-1 of the (image, h) rows by gathering: dx[n, h, w, c] = +0 +
    the sum, over the windows (oh, ow) containing (h, w) in output order, of dout[n, oh, ow, c] where
    the argmax names (h, w) -- the NCHW scatter's additions in its order, a channel vector at a time.
    ``ohlo[h] .. ohhi[h]`` (``owlo[w] .. owhi[w]``) are the windows whose rows (columns) reach h (w).

    Returns how many argmax values lie outside [0, kh*kw) (such values match no element, so nothing
    is written for them); each share counts those of output rows [h*OH // H, (h+1)*OH // H) of its
    rows h, so that every output row is counted once.
    """
    n_n, oh_n, ow_n, c_n = dout.shape
    h_n, w_n = dx.shape[1], dx.shape[2]
    kk = kh * kw
    zero = dx.dtype.type(0)
    bad = 0
    for t in range(t0, t1):
        n = t // h_n
        h = t % h_n
        for r in range(h * oh_n // h_n, (h + 1) * oh_n // h_n):
            ar = argmax[n, r]
            for ow in range(ow_n):
                a = ar[ow]
                for c in range(c_n):
                    bad += (a[c] < 0) | (a[c] >= kk)
        dxr = dx[n, h]
        for w in range(w_n):
            d = dxr[w]
            first = True
            for oh in range(ohlo[h], ohhi[h]):
                # row i of window oh holds h when h = oh*sh - top + i*dh (no division without
                # dilation: integer divisions here cost more than the channel loop)
                i = h + top - oh * sh
                if dh > 1:
                    if i % dh:
                        continue
                    i //= dh
                for ow in range(owlo[w], owhi[w]):
                    j = w + left - ow * sw
                    if dw > 1:
                        if j % dw:
                            continue
                        j //= dw
                    # (h, w) is element k = i*kw + j of window (oh, ow)
                    k = i * kw + j
                    g = dout[n, oh, ow]
                    a = argmax[n, oh, ow]
                    if first:  # +0 + the first term, written at once
                        first = False
                        for c in range(c_n):
                            d[c] = (g[c] if a[c] == k else zero) + zero
                    else:
                        for c in range(c_n):
                            d[c] += g[c] if a[c] == k else zero
            if first:
                for c in range(c_n):
                    d[c] = zero
    return bad


# ----------------------------------------------------------------------------------------------
# Average pooling, both layouts
# ----------------------------------------------------------------------------------------------
#
# One order of additions for both layouts, so that they give the same bits: a window's sum is the
# sum over its columns w (in order) of the column sums over its rows h (in order), each sum started
# from its first term, then multiplied by the window's 1/divisor. The backward spreads g = dout *
# (1/divisor) over each output row's columns (in window order, from +0) and sums those rows over the
# output rows covering an input row (in order). A window covering a whole plane (global average
# pooling) is summed in flat order instead, several planes at a time in NCHW.


@cached_njit(**_PLAIN)
def avgpool_forward_nchw(t0, t1, x, y, hs, he, ws, we, inv, left, sw, kw, lo, hi):  # pragma: no cover
    """Fill y (N, C, OH, OW) from x (N, C, H, W); planes t0..t1-1 of the (image, channel) planes.

    y[n, c, oh, ow] = inv[oh, ow] * sum_{w in [ws, we)} (sum_{h in [hs, he)} x[n, c, h, w]): the
    column sums for every w at once (vector adds of x's rows), then across each window's columns;
    windows ow in [lo, hi) have all kw columns ow*sw - left + j inside x and take the column sums
    a tap j at a time for all of them.
    """
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    col = np.empty(w_n, dtype=x.dtype)
    acc = np.empty(ow_n, dtype=x.dtype)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for t in range(t0, t1):
        xb = t * h_n * w_n
        for oh in range(oh_n):
            # col[w] = sum_{h in [hs, he)} x[n, c, h, w]
            xr = xf[xb + hs[oh] * w_n : xb + (hs[oh] + 1) * w_n]
            for w in range(w_n):
                col[w] = xr[w]
            for h in range(hs[oh] + 1, he[oh]):
                xr = xf[xb + h * w_n : xb + (h + 1) * w_n]
                for w in range(w_n):
                    col[w] += xr[w]
            for ow in range(lo):
                s = col[ws[ow]]
                for w in range(ws[ow] + 1, we[ow]):
                    s += col[w]
                acc[ow] = s
            # acc[ow] = sum_j col[ow*sw - left + j] for the windows inside x
            a_in = acc[lo:hi]
            c_j = col[lo * sw - left : max(hi - 1, lo) * sw - left + 1 : sw]
            for q in range(hi - lo):
                a_in[q] = c_j[q]
            for j in range(1, kw):
                c_j = col[lo * sw - left + j : max(hi - 1, lo) * sw - left + j + 1 : sw]
                for q in range(hi - lo):
                    a_in[q] += c_j[q]
            for ow in range(hi, ow_n):
                s = col[ws[ow]]
                for w in range(ws[ow] + 1, we[ow]):
                    s += col[w]
                acc[ow] = s
            yo = (t * oh_n + oh) * ow_n
            yr = yf[yo : yo + ow_n]
            iv = inv[oh]
            for ow in range(ow_n):
                yr[ow] = acc[ow] * iv[ow]


@cached_njit(**_PLAIN)
def avgpool_forward_nhwc(t0, t1, x, y, hs, he, ws, we, inv, kh, kw, lo, hi):  # pragma: no cover
    """Fill y (N, OH, OW, C) from x (N, H, W, C); output rows t0..t1-1 of the (image, oh) rows.

    y[n, oh, ow, c] = inv[oh, ow] * sum_{w in [ws, we)} (sum_{h in [hs, he)} x[n, h, w, c]), the
    NCHW kernel's additions in its order, a channel vector at a time. 2x2 and 3x3 windows inside x
    (columns: ow in [lo, hi)) are written out in one pass; the others sum their columns from a
    buffer of the row's column sums.
    """
    n_n, h_n, w_n, c_n = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    wc = w_n * c_n
    col2 = np.empty((w_n, c_n), dtype=x.dtype)
    col = col2.reshape(wc)
    for t in range(t0, t1):
        n = t // oh_n
        oh = t % oh_n
        h0 = hs[oh]
        rows_in = he[oh] - h0 == kh
        k22 = rows_in and kh == 2 and kw == 2
        k33 = rows_in and kh == 3 and kw == 3
        a, b = (lo, hi) if k22 or k33 else (0, 0)
        yr = y[n, oh]
        if k22:
            r0 = x[n, h0]
            r1 = x[n, h0 + 1]
            for ow in range(a, b):
                # (col w0) + (col w0 + 1), each column sum over the window's two rows
                w0 = ws[ow]
                s = inv[oh, ow]
                yo, a0, a1, b0, b1 = yr[ow], r0[w0], r1[w0], r0[w0 + 1], r1[w0 + 1]
                for c in range(c_n):
                    yo[c] = ((a0[c] + a1[c]) + (b0[c] + b1[c])) * s
        elif k33:
            r0 = x[n, h0]
            r1 = x[n, h0 + 1]
            r2 = x[n, h0 + 2]
            for ow in range(a, b):
                w0 = ws[ow]
                s = inv[oh, ow]
                yo, a0, a1, a2 = yr[ow], r0[w0], r1[w0], r2[w0]
                b0, b1, b2 = r0[w0 + 1], r1[w0 + 1], r2[w0 + 1]
                c0, c1, c2 = r0[w0 + 2], r1[w0 + 2], r2[w0 + 2]
                for c in range(c_n):
                    yo[c] = (
                        ((a0[c] + a1[c]) + a2[c]) + ((b0[c] + b1[c]) + b2[c]) + ((c0[c] + c1[c]) + c2[c])
                    ) * s
        if a == 0 and b == ow_n and b > a:
            continue
        # col[w*C + c] = sum_{h in [hs, he)} x[n, h, w, c]
        xr = x[n, h0].reshape(wc)
        for q in range(wc):
            col[q] = xr[q]
        for h in range(h0 + 1, he[oh]):
            xr = x[n, h].reshape(wc)
            for q in range(wc):
                col[q] += xr[q]
        for ow in range(ow_n):
            if a <= ow < b:
                continue
            yo = yr[ow]
            cr = col2[ws[ow]]
            for c in range(c_n):
                yo[c] = cr[c]
            for w in range(ws[ow] + 1, we[ow]):
                cr = col2[w]
                for c in range(c_n):
                    yo[c] += cr[c]
            s = inv[oh, ow]
            for c in range(c_n):
                yo[c] *= s


# Planes summed together by the NCHW global pool: independent sums, so the additions overlap.
_PLANES = 8


@cached_njit(**_PLAIN)
def avgpool_global_nchw(t0, t1, x, y, s):  # pragma: no cover
    """y[p] = s * sum_q x[p, q] in flat order q = h*W + w, for planes p in [t0, t1) of x (N*C, H*W)
    and y (N*C,); _PLANES planes at a time (their sums are independent chains of additions)."""
    L = x.shape[1]
    acc = np.empty(_PLANES, dtype=x.dtype)
    for b in range(t0, t1, _PLANES):
        m = min(_PLANES, t1 - b)
        if m == _PLANES:
            for p in range(_PLANES):
                acc[p] = x[b + p, 0]
            for q in range(1, L):
                for p in range(_PLANES):
                    acc[p] += x[b + p, q]
            for p in range(_PLANES):
                y[b + p] = acc[p] * s
        else:
            for p in range(m):
                a = x[b + p, 0]
                for q in range(1, L):
                    a += x[b + p, q]
                y[b + p] = a * s


@cached_njit(**_PLAIN)
def avgpool_global_nhwc(t0, t1, x, y, s):  # pragma: no cover
    """y[n, c] = s * sum_q x[n, q, c] in flat order q = h*W + w, for images n in [t0, t1) of
    x (N, H*W, C) and y (N, C): the NCHW global pool's additions, a channel vector at a time."""
    L = x.shape[1]
    c_n = x.shape[2]
    for n in range(t0, t1):
        yr = y[n]
        xr = x[n, 0]
        for c in range(c_n):
            yr[c] = xr[c]
        for q in range(1, L):
            xr = x[n, q]
            for c in range(c_n):
                yr[c] += xr[c]
        for c in range(c_n):
            yr[c] *= s


@cached_njit(**_PLAIN)
def avgpool_backward_nchw(
    t0, t1, dout, dx, ohlo, ohhi, ws, we, inv, left, sw, kw, lo, hi
):  # pragma: no cover
    """Write dx (N, C, H, W) from dout (N, C, OH, OW); planes t0..t1-1 of the (image, channel) planes.

    rows[oh, w] = +0 + the sum, over the windows ow whose columns contain w in increasing ow, of
    g = dout[n, c, oh, ow] * inv[oh, ow]; dx[n, c, h, :] = the sum of rows[oh] over the output rows
    oh in [ohlo[h], ohhi[h]) that cover h, in order (+0 for none). Windows inside x spread a tap j
    at a time, j from kw-1 down, so each column still receives its windows in increasing ow.
    """
    n_n, c_n, oh_n, ow_n = dout.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    rows = np.empty((oh_n, w_n), dtype=dx.dtype)
    g = np.empty(ow_n, dtype=dx.dtype)
    zero = dx.dtype.type(0)
    gf = dout.reshape(dout.size)
    df = dx.reshape(dx.size)
    for t in range(t0, t1):
        for oh in range(oh_n):
            rr = rows[oh]
            gr = gf[(t * oh_n + oh) * ow_n : (t * oh_n + oh + 1) * ow_n]
            iv = inv[oh]
            for ow in range(ow_n):
                g[ow] = gr[ow] * iv[ow]
            for w in range(w_n):
                rr[w] = zero
            for ow in range(lo):
                for w in range(ws[ow], we[ow]):
                    rr[w] += g[ow]
            for j in range(kw - 1, -1, -1):
                # rr[ow*sw - left + j] += g[ow] for the windows inside x
                r_j = rr[lo * sw - left + j : max(hi - 1, lo) * sw - left + j + 1 : sw]
                g_in = g[lo:hi]
                for q in range(hi - lo):
                    r_j[q] += g_in[q]
            for ow in range(hi, ow_n):
                for w in range(ws[ow], we[ow]):
                    rr[w] += g[ow]
        for h in range(h_n):
            dr = df[(t * h_n + h) * w_n : (t * h_n + h + 1) * w_n]
            if ohhi[h] == ohlo[h]:
                for w in range(w_n):
                    dr[w] = zero
                continue
            # +0 + rows[ohlo] is rows[ohlo] itself: a sum started from +0 is never -0
            rr = rows[ohlo[h]]
            for w in range(w_n):
                dr[w] = rr[w]
            for oh in range(ohlo[h] + 1, ohhi[h]):
                rr = rows[oh]
                for w in range(w_n):
                    dr[w] += rr[w]


@cached_njit(**_PLAIN)
def avgpool_backward_nhwc(t0, t1, dout, dx, ohlo, ohhi, owlo, owhi, inv):  # pragma: no cover
    """Write dx (N, H, W, C) rows t0..t1-1 of the (image, h) rows from dout (N, OH, OW, C) by
    gathering, per input pixel, the windows that hold it: the NCHW kernel's sums in its order (for
    each covering output row oh, +0 + the terms g = dout * inv of the windows ow in [owlo[w],
    owhi[w]) in order; those row sums added over oh in [ohlo[h], ohhi[h]) in order), a channel
    vector at a time. A pixel in one window is a single pass."""
    n_n, oh_n, ow_n, c_n = dout.shape
    h_n, w_n = dx.shape[1], dx.shape[2]
    tmp = np.empty(c_n, dtype=dx.dtype)
    zero = dx.dtype.type(0)
    for t in range(t0, t1):
        n = t // h_n
        h = t % h_n
        o0, o1 = ohlo[h], ohhi[h]
        dxr = dx[n, h]
        for w in range(w_n):
            d = dxr[w]
            a0, a1 = owlo[w], owhi[w]
            if o0 == o1 or a0 == a1:
                for c in range(c_n):
                    d[c] = zero
                continue
            for oh in range(o0, o1):
                buf = d if oh == o0 else tmp  # +0 + the first row sum is that sum: never -0
                s = inv[oh, a0]
                g = dout[n, oh, a0]
                for c in range(c_n):
                    buf[c] = g[c] * s + zero
                for ow in range(a0 + 1, a1):
                    s = inv[oh, ow]
                    g = dout[n, oh, ow]
                    for c in range(c_n):
                        buf[c] += g[c] * s
                if oh != o0:
                    for c in range(c_n):
                        d[c] += tmp[c]


@cached_njit(**_PLAIN)
def avgpool_global_backward(t0, t1, dout, dx, s):  # pragma: no cover
    """dx[p, q] = dout[p] * s for rows p in [t0, t1) of dx (P, L) and dout (P,) (NCHW: planes,
    L = H*W), or dx[n, q, c] = dout[n, c] * s with dx (N, H*W, C), dout (N, C) (NHWC)."""
    if dx.ndim == 2:
        for p in range(t0, t1):
            g = dout[p] * s
            d = dx[p]
            for q in range(d.shape[0]):
                d[q] = g
    else:
        c_n = dx.shape[2]
        for n in range(t0, t1):
            gr = dout[n]
            for q in range(dx.shape[1]):
                d = dx[n, q]
                for c in range(c_n):
                    d[c] = gr[c] * s


# ----------------------------------------------------------------------------------------------
# the contract's pooling kernels
# ----------------------------------------------------------------------------------------------

_max_forward_nchw = runtime.Announced(maxpool_forward_nchw)
_max_forward_nhwc = runtime.Announced(maxpool_forward_nhwc)
_max_backward_nchw = runtime.Announced(maxpool_backward_nchw)
_max_backward_nhwc = runtime.Announced(maxpool_backward_nhwc)
_avg_forward_nchw = runtime.Announced(avgpool_forward_nchw)
_avg_forward_nhwc = runtime.Announced(avgpool_forward_nhwc)
_avg_backward_nchw = runtime.Announced(avgpool_backward_nchw)
_avg_backward_nhwc = runtime.Announced(avgpool_backward_nhwc)
_global_forward = {
    "NCHW": runtime.Announced(avgpool_global_nchw),
    "NHWC": runtime.Announced(avgpool_global_nhwc),
}
_global_backward = runtime.Announced(avgpool_global_backward)


def _spatial(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def _out_shape(shape: tuple[int, ...], out_hw: Pair, layout: str) -> tuple[int, int, int, int]:
    n = shape[0]
    if layout == "NCHW":
        return (n, shape[1], out_hw[0], out_hw[1])
    return (n, out_hw[0], out_hw[1], shape[3])


def maxpool2d_forward(
    x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair, out_hw: Pair, layout: str
) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, C, H, W) or (N, H, W, C) -> y and argmax (int32 in [0, kh*kw)), (N, C, OH, OW) or
    (N, OH, OW, C) with (OH, OW) = out_hw.

    Window (oh, ow) covers x rows oh*sh - top + i*dh, i < kh (columns likewise); argmax is the
    window-local index i*kw + j of the first maximum (a NaN counts as the maximum).
    """
    x = np.ascontiguousarray(x)
    top, _, left, _ = pad
    y = np.empty(_out_shape(x.shape, out_hw, layout), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int32)
    if layout == "NCHW":
        # One vectorised NumPy pass (max propagates NaN) decides whether the kernel must test for
        # NaN: cheaper than a NaN test on every window element of its scalar loops.
        nan_aware = bool(np.isnan(x.max()))
        _max_forward_nchw(
            x.shape[0] * x.shape[1], x, y, argmax, kh, kw, *stride, top, left, *dilation, nan_aware
        )
    else:
        _max_forward_nhwc(x.shape[0] * out_hw[0], x, y, argmax, kh, kw, *stride, top, left, *dilation)
    return y, argmax


def maxpool2d_backward(
    dout: np.ndarray,
    argmax: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> np.ndarray:
    """dout, argmax: y's shape -> dx: x_shape (both in ``layout``); each window's gradient goes to
    the element its argmax names, overlapping windows summed in window order.

    Raises ValueError when an argmax value lies outside [0, kh*kw) (no such value is ever written).
    """
    dout = np.ascontiguousarray(dout)
    argmax = np.ascontiguousarray(argmax)
    top, _, left, _ = pad
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if layout == "NCHW":
        bits = np.dtype(f"i{dout.itemsize}")  # same-size integer views, for the bit masks
        bad = _max_backward_nchw(
            x_shape[0] * x_shape[1], dout, argmax, dx, dout.view(bits), dx.view(bits),
            kh, kw, *stride, top, left, *dilation,
        )  # fmt: skip
    else:
        ohlo, ohhi = _reaching(x_shape[1], kh, stride[0], top, dilation[0], dout.shape[1])
        owlo, owhi = _reaching(x_shape[2], kw, stride[1], left, dilation[1], dout.shape[2])
        bad = _max_backward_nhwc(
            x_shape[0] * x_shape[1],
            dout,
            argmax,
            dx,
            kh,
            kw,
            *stride,
            top,
            left,
            *dilation,
            ohlo,
            ohhi,
            owlo,
            owhi,
        )
    if sum(bad):
        raise bad_argmax_error(argmax, kh * kw)
    return dx


@functools.lru_cache(maxsize=256)
def _reaching(size: int, k: int, s: int, p0: int, d: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per input index i along one axis, the max-pool windows [lo, hi) whose span o*s - p0 ..
    o*s - p0 + (k-1)*d reaches i (with dilation, only some of them hold i itself)."""
    i = np.arange(size, dtype=np.int64)
    lo = np.clip(-((-(i + p0 - (k - 1) * d)) // s), 0, n_out)  # ceil((i + p0 - (k-1)*d) / s)
    hi = np.clip((i + p0) // s + 1, 0, n_out)
    hi = np.maximum(hi, lo)
    lo.setflags(write=False)
    hi.setflags(write=False)
    return lo, hi


def _windows(size: int, k: int, s: int, p0: int, p1: int, n_out: int, include_pad: bool):
    """Along one axis, PyTorch's windows: per output o the clipped window [start, end) and the
    divisor factor (start = o*s - p0, end = min(start + k, size + p1), factor end - start when
    padding counts, then start, end clipped to [0, size), and factor end - start when it does not);
    per input i the outputs [olo, ohi) whose clipped window holds i."""
    o = np.arange(n_out, dtype=np.int64)
    start = o * s - p0
    end = np.minimum(start + k, size + p1)
    full = end - start
    start = np.maximum(start, 0)
    end = np.minimum(end, size)
    factor = full if include_pad else end - start
    i = np.arange(size, dtype=np.int64)
    olo = np.searchsorted(end, i, side="right")  # first o with end[o] > i
    ohi = np.maximum(np.searchsorted(start, i, side="right"), olo)  # first o with start[o] > i
    return start, end, factor, olo, ohi


@functools.lru_cache(maxsize=256)
def _avg_plan(
    x_hw: Pair, kh: int, kw: int, stride: Pair, pad: Pad4, out_hw: Pair, include_pad: bool, dtype: str
):
    """Everything the average-pool kernels need besides the arrays, computed once per shape:
    the window bounds of both axes, 1/divisor per window in ``dtype``, the windows ow in [lo, hi)
    whose kw columns all lie inside x, and whether the one window is the whole plane (global)."""
    top, bottom, left, right = pad
    hs, he, hf, ohlo, ohhi = _windows(x_hw[0], kh, stride[0], top, bottom, out_hw[0], include_pad)
    ws, we, wf, owlo, owhi = _windows(x_hw[1], kw, stride[1], left, right, out_hw[1], include_pad)
    inv = (1.0 / np.outer(hf, wf).astype(np.float64)).astype(dtype)
    inside = (ws == np.arange(out_hw[1]) * stride[1] - left) & (we == ws + kw)
    idx = np.flatnonzero(inside)
    lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)
    if idx.size and idx.size != hi - lo:  # the inside windows are one run; keep the kernels honest
        lo, hi = 0, 0
    whole = out_hw == (1, 1) and (hs[0], he[0], ws[0], we[0]) == (0, x_hw[0], 0, x_hw[1])
    for a in (hs, he, ws, we, ohlo, ohhi, owlo, owhi, inv):
        a.setflags(write=False)
    return hs, he, ws, we, ohlo, ohhi, owlo, owhi, inv, lo, hi, whole


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
    """x: (N, C, H, W) or (N, H, W, C) -> y: (N, C, OH, OW) or (N, OH, OW, C), (OH, OW) = out_hw.

    y = (sum of x over the window clipped to x) * (1 / divisor), PyTorch's divisor: the window's
    size within the padded input (count_include_pad; never the ceil-mode overhang past the
    bottom/right padding) or within x.
    """
    x = np.ascontiguousarray(x)
    x_hw = _spatial(x.shape, layout)
    hs, he, ws, we, _, _, _, _, inv, lo, hi, whole = _avg_plan(
        x_hw, kh, kw, tuple(stride), tuple(pad), tuple(out_hw), bool(count_include_pad), x.dtype.name
    )
    y = np.empty(_out_shape(x.shape, out_hw, layout), dtype=x.dtype)
    n, plane = x.shape[0], x_hw[0] * x_hw[1]
    if whole:
        c = x.shape[1] if layout == "NCHW" else x.shape[3]
        if layout == "NCHW":
            _global_forward[layout](n * c, x.reshape(n * c, plane), y.reshape(n * c), inv[0, 0])
        else:
            _global_forward[layout](n, x.reshape(n, plane, c), y.reshape(n, c), inv[0, 0])
    elif layout == "NCHW":
        _avg_forward_nchw(n * x.shape[1], x, y, hs, he, ws, we, inv, pad[2], stride[1], kw, lo, hi)
    else:
        _avg_forward_nhwc(n * out_hw[0], x, y, hs, he, ws, we, inv, kh, kw, lo, hi)
    return y


def avgpool2d_backward(
    dout: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    count_include_pad: bool,
    layout: str,
) -> np.ndarray:
    """dout: y's shape -> dx: x_shape (both in ``layout``): dx[h, w] = sum over the windows
    containing (h, w) of dout * (1 / divisor) (the forward's divisor)."""
    dout = np.ascontiguousarray(dout)
    x_shape = tuple(x_shape)
    x_hw = _spatial(x_shape, layout)
    out_hw = _spatial(dout.shape, layout)
    _, _, ws, we, ohlo, ohhi, owlo, owhi, inv, lo, hi, whole = _avg_plan(
        x_hw, kh, kw, tuple(stride), tuple(pad), out_hw, bool(count_include_pad), dout.dtype.name
    )
    dx = np.empty(x_shape, dtype=dout.dtype)
    n, plane = x_shape[0], x_hw[0] * x_hw[1]
    if whole:
        if layout == "NCHW":
            c = x_shape[1]
            _global_backward(n * c, dout.reshape(n * c), dx.reshape(n * c, plane), inv[0, 0])
        else:
            c = x_shape[3]
            _global_backward(n, dout.reshape(n, c), dx.reshape(n, plane, c), inv[0, 0])
    elif layout == "NCHW":
        _avg_backward_nchw(n * x_shape[1], dout, dx, ohlo, ohhi, ws, we, inv, pad[2], stride[1], kw, lo, hi)
    else:
        _avg_backward_nhwc(n * x_hw[0], dout, dx, ohlo, ohhi, owlo, owhi, inv)
    return dx


def warmup_kernels(
    dtype: str | np.dtype,
    layouts: tuple[str, ...] = ("NCHW", "NHWC"),
    *,
    maximum: bool = True,
    average: bool = True,
) -> None:
    """Run the pooling kernels of ``layouts`` once on a tiny input of ``dtype`` (compiles them or
    loads them from the cache): max pooling forward (with and without NaN) and backward, and average
    pooling forward and backward, windowed and global."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    one, two, pad = (1, 1), (2, 2), (0, 1, 0, 1)
    for layout in layouts:
        xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if maximum:
            for xs in (xl, np.where(xl > 1, np.nan, xl).astype(dtype)):
                y, am = maxpool2d_forward(xs, 2, 2, two, pad, one, (3, 3), layout)
            maxpool2d_backward(y, am, xl.shape, 2, 2, two, pad, one, layout)
        if average:
            for k, s, p, out in ((2, two, pad, (3, 3)), (5, (5, 5), (0, 0, 0, 0), (1, 1))):
                y = avgpool2d_forward(xl, k, k, s, p, out, True, layout)
                avgpool2d_backward(y, xl.shape, k, k, s, p, True, layout)
