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


@njit(**_PLAIN)
def maxpool_forward(x, y, am, kh, kw, sh, sw, ph, pw, dh, dw, nan_aware):  # pragma: no cover - jitted
    """Fill y, am (N, C, OH, OW) from x (N, C, H, W): max and argmax; prange over (image, channel) planes.

    argmax is the window-local index i*kw + j of the first maximum in row-major order; padding
    reads as -inf and a NaN counts as the maximum (the first NaN wins), as numpy.argmax does.
    ``nan_aware=False`` (the caller found no NaN in x) drops the NaN test from the inner loop,
    which halves its time.
    """
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    ninf = x.dtype.type(-np.inf)
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        xp = x[n, c]
        yp = y[n, c]
        ap = am[n, c]
        for oh in range(oh_n):
            h0 = oh * sh - ph
            inside_h = h0 >= 0 and h0 + (kh - 1) * dh < h_n
            for ow in range(ow_n):
                # window element (i, j) = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
                w0 = ow * sw - pw
                if inside_h and w0 >= 0 and w0 + (kw - 1) * dw < w_n and not nan_aware:
                    best = xp[h0, w0]
                    bi = 0
                    for i in range(kh):
                        xr = xp[h0 + i * dh]
                        for j in range(kw):
                            v = xr[w0 + j * dw]
                            if v > best:
                                best = v
                                bi = i * kw + j
                else:
                    best = ninf
                    bi = 0
                    for i in range(kh):
                        h = h0 + i * dh
                        for j in range(kw):
                            w = w0 + j * dw
                            v = xp[h, w] if (0 <= h < h_n and 0 <= w < w_n) else ninf
                            if i + j == 0:
                                best = v
                            elif v > best or (v != v and best == best):
                                best = v
                                bi = i * kw + j
                yp[oh, ow] = best
                ap[oh, ow] = bi


@njit(**_PLAIN)
def maxpool_backward(dout, argmax, dx, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """Write dx (N, C, H, W): each window's dout goes to the element its argmax names; prange over planes."""
    n_n, c_n, oh_n, ow_n = dout.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    # window index k = i*kw + j -> offsets (i*dh - ph, j*dw - pw), tabulated (no division per element)
    off_h = np.empty(kh * kw, dtype=np.int64)
    off_w = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off_h[i * kw + j] = i * dh - ph
            off_w[i * kw + j] = j * dw - pw
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        dp = dx[n, c]
        gp = dout[n, c]
        ap = argmax[n, c]
        for h in range(h_n):
            dr = dp[h]
            for w in range(w_n):
                dr[w] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                # k = argmax = i*kw + j -> dx[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] += dout[n, c, oh, ow]
                k = ap[oh, ow]
                h = oh * sh + off_h[k]
                w = ow * sw + off_w[k]
                if 0 <= h < h_n and 0 <= w < w_n:
                    dp[h, w] += gp[oh, ow]
