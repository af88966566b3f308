"""Winograd convolution F(m x m, 3 x 3), m = 4 or 2, for the numba backend: forward, dx, dW, db.

The algorithm, tile layout, transform matrices and accuracy are those of
:mod:`fastconv.backends.numpy.winograd` (its docstring has the formulas; :data:`ERROR_BOUND` the
stated error bounds, the same for both modules):

* float32 F(4x4,3x3): max relative error <= 2e-5 (measured <= 4.7e-6); F(2x2,3x3) <= 3e-6 (8.1e-7);
* float64 F(4x4,3x3): <= 5e-14 (8.7e-15); F(2x2,3x3) <= 1e-14 (1.5e-15);

for C*9 (forward), F*9 (dx) <= 1152 and dW over up to N*OH*OW = 65536 pixels, measured on the
shapes x(64,32,13,13) W(64,32,3,3); x(64,64,32,32) W(64,64,3,3) pad 1; x(32,128,28,28) W(128,128,3,3)
pad 1 with standard-normal inputs (``benchmarks/winograd_vs_torch.py --accuracy``). PyTorch float32
measures 3e-7 to 4e-7 there.

Threads (the design measured in ``shared/notes/cpu-conv-algorithms.md``): the images are cut into
contiguous shares (:func:`runtime.parallel_for`: several per thread for the forward and dx, one per
thread for dW, whose shares each return a partial sum), and each share does, chunk by chunk
of about :data:`TILES_PER_CHUNK` tiles, in sequence: the input transform (:func:`tile_transform`,
rows then columns of every tile, vectorised along the tiles), the ``alpha**2`` products as
single-threaded BLAS GEMMs ``(T, F, C) @ (T, C, tiles)``, the output transform ``A^T M A`` of every
tile as one more GEMM with ``kron(A^T, A^T)``, and :func:`untile`, which puts the tiles in place and
adds the bias. BLAS and the transforms never compete for a core. The filter transform is one GEMM
per call. dW: per chunk, the input transform of x (recomputed, nothing is kept between calls), the
adjoint of the output transform of dout (:func:`tile_transform` with ``A``), and ``alpha**2``
GEMMs ``(F, tiles) @ (tiles, C)``; the shares' partial sums are added in share order, each share's
chunks in order: the same bits run to run for a fixed thread count.

Tile layout inside a chunk: tile ``(ty, tx)`` of image ``n0 + g`` is column ``g*th*(tw+1) + ty*(tw+1)
+ tx``; the column ``tx = tw`` of every tile row is junk (computed, never read back, zero in dW's
dout transform): it lets every transform loop run over whole planes, at the price of 1/tw more
GEMM columns.

Two numba kernels, one specialisation per dtype (both m share it), ``nogil``, no ``parallel=True``.
``runtime.cached_njit`` compiles them into the per-user cache, never into the package.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from fastconv._shapes import as_pad4
from fastconv.backends.numba import runtime
from fastconv.backends.numpy.winograd import ERROR_BOUND, TILE, matrices, supports

__all__ = ["ERROR_BOUND", "TILE", "TILES_PER_CHUNK", "backward", "forward", "supports"]

# Tiles per chunk of images: enough columns for an efficient GEMM, few enough that a chunk's V, M and
# output tiles (S4 float32: 0.6 + 0.6 + 0.3 MB) stay in a 2 MB L2 between the transforms and the
# GEMMs. Measured 128, 256, 512 on a 2-core VM shared with other jobs: 128 no slower on one thread
# and 10-20% faster on two (S4 forward), within that machine's noise.
TILES_PER_CHUNK = 128

_FLAGS = {"nogil": True, "fastmath": {"contract", "reassoc"}}


@runtime.cached_njit(**_FLAGS)
def tile_transform(src, n0, n1, ph, pw, mat, m, th, tw, out, xs, hz):  # pragma: no cover - jitted
    # out[a*A + b, c, (n-n0)*th*W1 + ty*W1 + tx] = sum_{i,j < p} mat[a,i] mat[b,j] srcpad[n, c, ty*m + i, tx*m + j]
    # for tx <= tw (W1 = tw + 1: tile column tw is junk, never read back as output), A, p = mat.shape,
    # p <= 2m, srcpad = src shifted by (ph, pw) (negative: cropped) in zeros. Scratch, L = (th+1)*W1:
    # xs (m, m, nb*L + 1) the planes of channel c split by phase, xs[si, sj, g*L + u*W1 + v] =
    # srcpad[n0 + g, c, u*m + si, v*m + sj]; hz (A, m, nb*L) their row transforms.
    A, p = mat.shape
    c_n, h, w = src.shape[1], src.shape[2], src.shape[3]
    w1 = tw + 1
    L = (th + 1) * w1
    P = th * w1
    nb = n1 - n0
    xs[:] = 0  # the border is the same for every plane: written once
    for c in range(c_n):
        for g in range(nb):
            for r in range(max(0, -ph), min(h, (th + 1) * m - ph)):
                rp = r + ph
                si, row = rp % m, g * L + (rp // m) * w1
                for sj in range(m):
                    q0 = sj - pw  # source column of v = 0
                    v0 = (-q0 + m - 1) // m if q0 < 0 else 0
                    v1 = min(w1, (w - 1 - q0) // m + 1) if w - 1 - q0 >= 0 else 0
                    xd, xsrc = xs[si, sj, row + v0 :], src[n0 + g, c, r, q0 + v0 * m :]
                    for v in range(v1 - v0):
                        xd[v] = xsrc[v * m]
        # rows: hz[b, si, t] = sum_j mat[b, j] xs[si, j % m, t + j // m], t < nb*L
        for b in range(A):
            first = True
            for j in range(p):
                k = mat[b, j]
                if k == 0:
                    continue
                sj, dj = j % m, j // m
                for si in range(m):
                    # views: a bare loop counter as index skips numba's negative-index check,
                    # which otherwise blocks vectorisation
                    hrow, xrow = hz[b, si], xs[si, sj, dj:]
                    if first:
                        for t in range(nb * L):
                            hrow[t] = k * xrow[t]
                    else:
                        for t in range(nb * L):
                            hrow[t] += k * xrow[t]
                first = False
        # columns: out[a*A + b, c, g*P + t] = sum_i mat[a, i] hz[b, i % m, g*L + t + (i // m)*W1], t < P
        for a in range(A):
            for b in range(A):
                o = out[a * A + b, c]
                first = True
                for i in range(p):
                    k = mat[a, i]
                    if k == 0:
                        continue
                    hrow, di = hz[b, i % m], (i // m) * w1
                    for g in range(nb):
                        og, hg = o[g * P :], hrow[g * L + di :]
                        if first:
                            for t in range(P):
                                og[t] = k * hg[t]
                        else:
                            for t in range(P):
                                og[t] += k * hg[t]
                    first = False


@runtime.cached_njit(**_FLAGS)
def untile(Y, n0, n1, m, th, tw, bias, y):  # pragma: no cover - jitted
    # y[n, f, ty*m + u, tx*m + v] = bias[f] + Y[f, (n-n0)*th*W1 + ty*W1 + tx, u*m + v] for ty*m + u < OH,
    # tx*m + v < OW (W1 = tw + 1): the output tiles A^T M A (one GEMM with kron(A^T, A^T)) put in place
    f_n, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    w1 = tw + 1
    P = th * w1
    full, rest = ow // m, ow % m
    for g in range(n1 - n0):
        for f in range(f_n):
            bf = bias[f]
            for row in range(oh):
                u, t0 = row % m, g * P + (row // m) * w1
                yr, src = y[n0 + g, f, row], Y[f, t0:]
                for tx in range(full):
                    for v in range(m):
                        yr[tx * m + v] = src[tx, u * m + v] + bf
                for v in range(rest):
                    yr[full * m + v] = src[full, u * m + v] + bf


def _dtype(x: np.ndarray) -> np.dtype:
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"winograd needs float32 or float64 arrays, got {x.dtype}")
    return x.dtype


def _chunk(n: int, tiles: int) -> int:
    """Images per chunk: about TILES_PER_CHUNK tiles, and no more than a thread's share of n."""
    share = -(-n // max(1, runtime.num_threads()))
    return max(1, min(share, -(-TILES_PER_CHUNK // tiles)))


def _scratch(m: int, th: int, tw: int, nb: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Scratch arrays xs, hz of :func:`tile_transform` for nb images of th x tw tiles of size m."""
    L = (th + 1) * (tw + 1)
    return np.empty((m, m, nb * L + 1), dtype=dtype), np.empty((m + 2, m, nb * L), dtype=dtype)


@cache
def _mats(m: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A^T, B^T, A = (A^T)^T contiguous, kron(G, G), all read-only (one numba specialisation)."""
    at, _, bt, gg = matrices(m, dtype)
    a = np.ascontiguousarray(at.T)
    a.flags.writeable = False
    return at, bt, a, gg


@cache
def _kron_at(m: int, dtype: str) -> np.ndarray:
    """kron(A^T, A^T)^T (alpha**2, m*m): the output transform of every tile as one GEMM."""
    at = matrices(m, dtype)[0]
    return np.ascontiguousarray(np.kron(at, at).T)


def _filter_transform(W: np.ndarray, gg: np.ndarray) -> np.ndarray:
    """W (F, C, 3, 3) -> U (alpha**2, F, C) = G g G^T for every (f, c): one GEMM with kron(G, G)."""
    f, c = W.shape[:2]
    return np.ascontiguousarray((gg @ W.reshape(f * c, 9).T).reshape(-1, f, c))


def _conv_share(lo, hi, x, U, bias, ph, pw, m, th, tw, step, y):
    """y[lo:hi] = Winograd correlation of x[lo:hi] with U, chunk by chunk of ``step`` images."""
    _, bt, _, _ = _mats(m, x.dtype.name)
    aa = _kron_at(m, x.dtype.name)
    a = m + 2
    P = th * (tw + 1)  # tiles per image, with the junk column
    c, f = x.shape[1], U.shape[1]
    vbuf = np.empty(a * a * c * step * P, dtype=x.dtype)
    mbuf = np.empty(a * a * f * step * P, dtype=x.dtype)
    ybuf = np.empty(m * m * f * step * P, dtype=x.dtype)
    scratch = _scratch(m, th, tw, step, x.dtype)
    for n0 in range(lo, hi, step):
        n1 = min(n0 + step, hi)
        k = (n1 - n0) * P
        V = vbuf[: a * a * c * k].reshape(a * a, c, k)
        M = mbuf[: a * a * f * k].reshape(a * a, f, k)
        Y = ybuf[: m * m * f * k].reshape(f, k, m * m)
        tile_transform(x, n0, n1, ph, pw, bt, m, th, tw, V, *scratch)
        np.matmul(U, V, out=M)  # (T, F, C) @ (T, C, tiles)
        # A^T M A for every (f, tile): (F*tiles, T) @ (T, m*m), BLAS reads M transposed as it is
        np.matmul(M.reshape(a * a, f * k).T, aa, out=Y.reshape(f * k, m * m))
        untile(Y, n0, n1, m, th, tw, bias, y)


def _conv(x, U, b, ph, pw, oh, ow, m):
    n = x.shape[0]
    f = U.shape[1]
    th, tw = -(-oh // m), -(-ow // m)
    y = np.empty((n, f, oh, ow), dtype=x.dtype)
    bias = np.zeros(f, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    step = _chunk(n, th * tw)
    with runtime.compile_notice("winograd", x.dtype.name), runtime.single_threaded_blas:
        runtime.parallel_for(_conv_share, n, x, U, bias, ph, pw, m, th, tw, step, y)
    return y


def forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, pad: tuple[int, int, int, int], m: int = 4
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, 3, 3), b: (F,) or None, stride 1, pad (top, bottom, left, right)
    -> y: (N, F, OH, OW), OH = H + top + bottom - 2, OW = W + left + right - 2, in x's dtype
    (float32 or float64). The tiles only need the top and left padding (the output size sets the rest)."""
    dt = _dtype(x)
    x = np.ascontiguousarray(x)
    top, bottom, left, right = (int(p) for p in as_pad4(pad))  # a symmetric pair reads as (h, h, w, w)
    ph, pw = top, left
    oh, ow = x.shape[2] + top + bottom - 2, x.shape[3] + left + right - 2
    gg = _mats(m, dt.name)[3]
    U = _filter_transform(np.asarray(W, dtype=dt), gg)
    return _conv(x, U, b, ph, pw, oh, ow, m)


def _dw_share(lo, hi, x, dout, ph, pw, m, th, tw, step):
    """sum over the tiles of images lo..hi-1 of (A dY A^T)_t V_t^T: (T, F, C), chunks added in order."""
    _, bt, a_t, _ = _mats(m, x.dtype.name)
    a = m + 2
    P = th * (tw + 1)  # tiles per image, with the junk column
    c, f = x.shape[1], dout.shape[1]
    vbuf = np.empty(a * a * c * step * P, dtype=x.dtype)
    dbuf = np.empty(a * a * f * step * P, dtype=x.dtype)
    scratch = _scratch(m, th, tw, step, x.dtype)
    acc = np.zeros((a * a, f, c), dtype=x.dtype)
    part = np.empty_like(acc)
    for n0 in range(lo, hi, step):
        n1 = min(n0 + step, hi)
        k = (n1 - n0) * P
        V = vbuf[: a * a * c * k].reshape(a * a, c, k)
        dM = dbuf[: a * a * f * k].reshape(a * a, f, k)
        tile_transform(x, n0, n1, ph, pw, bt, m, th, tw, V, *scratch)
        tile_transform(dout, n0, n1, 0, 0, a_t, m, th, tw, dM, *scratch)
        for t in range(a * a):  # np.dot hands the transposed operand to BLAS as is
            np.dot(dM[t], V[t].T, out=part[t])
        acc += part
    return acc


def backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    pad: tuple[int, int, int, int],
    need_dx: bool = True,
    m: int = 4,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout: (N, F, OH, OW) -> dx (N, C, H, W) or None, dW (F, C, 3, 3), db (F,), in x's dtype.

    dx: the Winograd correlation of dout with W flipped and transposed (C <-> F), padding 2 - p (a
    negative padding crops dout; pad (top, bottom, left, right), of which the index math needs
    the top and left); dW = G^T (sum_tiles (A dY A^T) V^T) G; db = dout summed."""
    dt = _dtype(x)
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=dt)
    W = np.asarray(W, dtype=dt)
    ph, pw = int(as_pad4(pad)[0]), int(as_pad4(pad)[2])
    n, c, h, w = x.shape
    f = W.shape[0]
    oh, ow = dout.shape[2:]
    gg = _mats(m, dt.name)[3]
    a = m + 2
    dx = None
    if need_dx:
        Wt = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx = _conv(dout, _filter_transform(Wt, gg), None, 2 - ph, 2 - pw, h, w, m)
    th, tw = -(-oh // m), -(-ow // m)
    step = _chunk(n, th * tw)
    with runtime.single_threaded_blas:
        # one share per thread: each returns a partial dU of (alpha**2, F, C), summed in share order
        parts = runtime.parallel_for(_dw_share, n, x, dout, ph, pw, m, th, tw, step, per_thread=1)
    dU = parts[0]
    for p in parts[1:]:
        dU += p
    dW = (gg.T @ dU.reshape(a * a, f * c)).reshape(3, 3, f, c).transpose(2, 3, 0, 1)
    return dx, np.ascontiguousarray(dW), dout.sum(axis=(0, 2, 3))
