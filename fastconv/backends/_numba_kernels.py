"""The numba kernels of the ``numba`` backend (private; imported on first use, never at ``import fastconv``).

Every kernel is a plain ``@njit(parallel=True, cache=True)`` function, so ``NUMBA_DISABLE_JIT=1``
runs it as ordinary Python. Parallel loops (``prange``) always run over disjoint outputs (an image,
an (image, channel) plane, a filter): no write races, and every sum is taken in one fixed order, so
results are bitwise reproducible run to run.

Kernels write into arrays the caller allocates with NumPy: NumPy asks the kernel for huge
pages on big arrays, while memory numba allocates is faulted in 4 KiB pages, which cost up to
25 us each in a virtual machine (50 ms for an 8 MB result, measured here).

Shared argument names: ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw`` dilation, ``oh_n, ow_n``
the output size from :func:`fastconv._shapes.conv_output_size` (the caller computes it once).
Importing this module sets numba's threading layer to ``workqueue`` unless the user chose one
with ``NUMBA_THREADING_LAYER`` (numba's OpenMP layer spin-waits against OpenBLAS's threads).
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "workqueue"

_PLAIN = {"parallel": True, "cache": True}


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


@njit(**_PLAIN)
def im2col_planes(x, n0, col, wide, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):  # pragma: no cover
    """Fill col from images n0..n0+B of x; prange over (image, channel) planes.

    col is (B, C*kh*kw, OH*OW) (per-image layout), or (C*kh*kw, B, OH*OW) when ``wide`` (one GEMM
    for all B images). Every inner loop runs from 0 over a slice (no negative indices), so it
    compiles to a vector copy.
    """
    b_n = col.shape[1] if wide else col.shape[0]
    c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
    for t in prange(b_n * c_n):
        b = t // c_n
        c = t % c_n
        xp = x[n0 + b, c]
        for i in range(kh):
            for j in range(kw):
                # col[b, (c*kh + i)*kw + j, oh*OW + ow] = xpad[n0 + b, c, oh*sh + i*dh, ow*sw + j*dw]
                cr = col[(c * kh + i) * kw + j, b] if wide else col[b, (c * kh + i) * kw + j]
                w0 = j * dw - pw
                lo, hi = _valid_range(w0, sw, w_n, ow_n)
                m = hi - lo
                for oh in range(oh_n):
                    h = oh * sh + i * dh - ph
                    row = cr[oh * ow_n : (oh + 1) * ow_n]
                    if h < 0 or h >= h_n or m == 0:
                        for q in range(ow_n):
                            row[q] = 0
                        continue
                    for q in range(lo):
                        row[q] = 0
                    tail = row[hi:]
                    for q in range(ow_n - hi):
                        tail[q] = 0
                    dst = row[lo:hi]
                    src = xp[h, lo * sw + w0 :]
                    if sw == 1:
                        for q in range(m):
                            dst[q] = src[q]
                    else:
                        for q in range(m):
                            dst[q] = src[q * sw]


@njit(**_PLAIN)
def col2im_planes(dcol, n0, dx, wide, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):  # pragma: no cover
    """Write dx[n0:n0+B] from dcol (B, C*kh*kw, OH*OW), or (C*kh*kw, B, OH*OW) when ``wide``;
    prange over planes, taps summed in order."""
    b_n = dcol.shape[1] if wide else dcol.shape[0]
    c_n, h_n, w_n = dx.shape[1], dx.shape[2], dx.shape[3]
    for t in prange(b_n * c_n):
        b = t // c_n
        c = t % c_n
        dp = dx[n0 + b, c]
        for h in range(h_n):
            dr = dp[h]
            for w in range(w_n):
                dr[w] = 0
        for i in range(kh):
            for j in range(kw):
                # dx[n0 + b, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += dcol[b, (c*kh + i)*kw + j, oh*OW + ow]
                cr = dcol[(c * kh + i) * kw + j, b] if wide else dcol[b, (c * kh + i) * kw + j]
                w0 = j * dw - pw
                lo, hi = _valid_range(w0, sw, w_n, ow_n)
                m = hi - lo
                if m == 0:
                    continue
                for oh in range(oh_n):
                    h = oh * sh + i * dh - ph
                    if h < 0 or h >= h_n:
                        continue
                    src = cr[oh * ow_n + lo : oh * ow_n + hi]
                    dst = dp[h, lo * sw + w0 :]
                    if sw == 1:
                        for q in range(m):
                            dst[q] += src[q]
                    else:
                        for q in range(m):
                            dst[q * sw] += src[q]


# ----------------------------------------------------------------------------------------------
# Max pooling
# ----------------------------------------------------------------------------------------------


@njit(inline="always")
def _window_max(xp, h0, w0, kh, kw, dh, dw, ninf):  # pragma: no cover - jitted
    """Max and first argmax of the window at (h0, w0) of plane xp; -inf outside xp, first NaN wins."""
    h_n, w_n = xp.shape
    best = ninf
    bi = 0
    for i in range(kh):
        h = h0 + i * dh
        for j in range(kw):
            # window element (i, j) = xp[h0 + i*dh, w0 + j*dw], or -inf in the padding
            w = w0 + j * dw
            v = xp[h, w] if (0 <= h < h_n and 0 <= w < w_n) else ninf
            if i + j == 0:
                best = v
            elif v > best or (v != v and best == best):
                best = v
                bi = i * kw + j
    return best, bi


@njit(inline="always")
def _inner_row(xp, yr, ar, h0, lo, hi, kh, kw, sw, w_off):  # pragma: no cover - jitted
    """Windows lo..hi of one output row, all inside xp, dilation 1, NaN ignored; returns whether the
    row held a NaN (the caller then redoes it with the exact loop).

    Called with literal kh, kw (2 or 3) so that LLVM unrolls the window and keeps it in registers.
    """
    nan = False
    for ow in range(lo, hi):
        # window element (i, j) = xp[h0 + i, ow*sw + w_off + j]
        w0 = ow * sw + w_off
        best = xp[h0, w0]
        bi = 0
        for i in range(kh):
            for j in range(kw):
                v = xp[h0 + i, w0 + j]
                nan |= v != v
                if v > best:
                    best = v
                    bi = i * kw + j
        yr[ow] = best
        ar[ow] = bi
    return nan


@njit(**_PLAIN)
def maxpool_forward(x, y, am, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """Fill y, am (N, C, OH, OW) from x (N, C, H, W): max and argmax; prange over (image, channel) planes.

    argmax is the window-local index i*kw + j of the first maximum in row-major order; padding
    reads as -inf and a NaN counts as the maximum (the first NaN wins), as numpy.argmax does.
    2x2 and 3x3 windows (dilation 1) that lie inside x take an unrolled loop without the NaN test;
    a row in which that loop met a NaN is redone by the exact loop, as are the border windows.
    """
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    ninf = x.dtype.type(-np.inf)
    # windows inside x: ow in [lo, hi), oh in [hlo, hhi)
    lo, hi = _valid_range(-pw, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-ph, sh, h_n - (kh - 1) * dh, oh_n)
    fast = dh == 1 and dw == 1 and ((kh == 2 and kw == 2) or (kh == 3 and kw == 3))
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        xp = x[n, c]
        yp = y[n, c]
        ap = am[n, c]
        for oh in range(oh_n):
            # window (oh, ow) covers xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
            h0 = oh * sh - ph
            yr = yp[oh]
            ar = ap[oh]
            a, b = (lo, hi) if (fast and hlo <= oh < hhi) else (0, 0)
            if b > a:
                if kh == 2:
                    nan = _inner_row(xp, yr, ar, h0, a, b, 2, 2, sw, -pw)
                else:
                    nan = _inner_row(xp, yr, ar, h0, a, b, 3, 3, sw, -pw)
                if nan:  # a NaN in the row: redo it with the exact loop
                    a, b = 0, 0
            for ow in range(ow_n):
                if a <= ow < b:
                    continue
                yr[ow], ar[ow] = _window_max(xp, h0, ow * sw - pw, kh, kw, dh, dw, ninf)


@njit(**_PLAIN)
def maxpool_backward(dout, argmax, dx, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """Write dx (N, C, H, W): each window's dout goes to the element its argmax names; prange over planes.

    Each plane of dx is zeroed and then accumulated in L1 (windows in output order, so overlapping
    windows sum deterministically); the argmax k = i*kw + j maps to a flat offset through a table.
    """
    n_n, c_n, oh_n, ow_n = dout.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    hw = h_n * w_n
    d = dx.reshape(n_n * c_n * hw)
    # k = i*kw + j -> flat offset i*dh*W + j*dw from the window origin
    off = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j] = i * dh * w_n + j * dw
    lo, hi = _valid_range(-pw, sw, w_n - (kw - 1) * dw, ow_n)
    hlo, hhi = _valid_range(-ph, sh, h_n - (kh - 1) * dh, oh_n)
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        dp = d[t * hw : (t + 1) * hw]
        gp = dout[n, c]
        ap = argmax[n, c]
        for q in range(hw):
            dp[q] = 0
        for oh in range(oh_n):
            gr = gp[oh]
            ar = ap[oh]
            h0 = oh * sh - ph
            a, b = (lo, hi) if hlo <= oh < hhi else (0, 0)
            for ow in range(ow_n):
                # dx[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += dout[n, c, oh, ow], k = argmax = i*kw + j
                if a <= ow < b:
                    dp[h0 * w_n + ow * sw - pw + off[ar[ow]]] += gr[ow]
                    continue
                k = ar[ow]
                i = k // kw
                h = h0 + i * dh
                w = ow * sw - pw + (k - i * kw) * dw
                if 0 <= h < h_n and 0 <= w < w_n:
                    dp[h * w_n + w] += gr[ow]
