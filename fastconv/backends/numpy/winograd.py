"""Winograd convolution F(m x m, 3 x 3), m = 4 or 2, in whole-array NumPy: forward, dx, dW, db.

Stride 1, dilation 1, 3x3 kernels, groups 1, "NCHW" only (:func:`supports` says why not for the
kernel geometry; the backend's ``algorithm_support`` adds the rest). pad = (top, bottom, left, right):
the kernels here run any padding, asymmetric and larger than the kernel included (only top and left
place the tiles; bottom and right set OH, OW), while ``algorithm_support`` refuses an asymmetric pad,
as the contract states for every backend's Winograd. With ``alpha = m + 2`` and ``T = alpha**2``:

* tiles: output tile ``(ty, tx)`` covers ``y[.., ty*m : ty*m + m, tx*m : tx*m + m]`` and reads the input
  patch ``xpad[.., ty*m : ty*m + alpha, tx*m : tx*m + alpha]``; ``th = ceil(OH / m)``, ``tw = ceil(OW / m)``
  tiles, the partial edge tiles read zeros past the padded input and their extra outputs are dropped;
* filter transform ``U = G g G^T`` for every (F, C): one GEMM with ``kron(G, G)`` (T x 9);
* input transform ``V = B^T d B`` -> ``(T, C, tiles)``; the products are T GEMMs
  ``(T, F, C) @ (T, C, tiles)``; output transform ``y = A^T M A`` (+ bias);
* dx is the same convolution of ``dout`` with W flipped and transposed (C <-> F), padding ``2 - top``
  rows and ``2 - left`` columns before it (a negative padding crops), H x W outputs; dW is the
  adjoint: ``dU = sum_tiles (A dY A^T) V^T`` then ``dW = G^T dU G`` (one GEMM with ``kron(G, G)^T``);
  db is ``dout`` summed over (N, OH, OW).

Transform matrices from the points 0, 1, -1 (m = 2) and 0, 1, -1, 1/2, -2 (m = 4), plus infinity
(Toom-Cook as in Lavin & Gray 2016, whose 0, +-1, +-2 measure 2.5-4x the float32 error of these; see
:data:`POINTS`), built exactly with fractions by :func:`matrices`.

Accuracy: max relative error ``max |y - y_ref| / max |y_ref|`` against the float64 direct
convolution, standard-normal x, W and dout, forward, dx and dW, on S3 x(64,32,13,13) W(64,32,3,3);
S4 x(64,64,32,32) W(64,64,3,3) pad 1; S5 x(32,128,28,28) W(128,128,3,3) pad 1, this module and the
numba one (``python benchmarks/winograd_vs_torch.py --accuracy``, 2026-11-30):

============  ==================  ==================  ===========================
(m, dtype)    measured maximum    stated bound        (PyTorch, same dtype)
============  ==================  ==================  ===========================
4, float32    4.7e-6              2e-5                3e-7 to 4e-7
2, float32    8.1e-7              3e-6
4, float64    8.7e-15             5e-14
2, float64    1.5e-15             1e-14
============  ==================  ==================  ===========================

The bound is stated for sums of up to C*9 = 1152 products (forward), F*9 = 1152 (dx) and
N*OH*OW = 65536 pixels (dW); the error grows about as the square root of the sum's length beyond.
:data:`ERROR_BOUND` holds it, and the tests check it.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Stated bound on the max relative error per (m, dtype): the measured maxima of the module docstring
# with a margin of 4x or more.
ERROR_BOUND = {
    (4, "float32"): 2e-5,
    (2, "float32"): 3e-6,
    (4, "float64"): 5e-14,
    (2, "float64"): 1e-14,
}

# Interpolation points (plus infinity). For m = 4, 1/2 in place of Lavin & Gray's 2 cuts the float32
# error 2.5-4x (max relative error on x(16,128,28,28) W(128,128,3,3) pad 1: forward 9.2e-6 -> 3.7e-6,
# dx 9.8e-6 -> 3.9e-6, dW 1.4e-5 -> 3.7e-6; {0, +-1, +-1/2} 8.5e-6, {0, +-1, 2, -1/2} 3.8e-6).
# Output tile size m of each Winograd algorithm name: F(m x m, 3 x 3).
TILE = {"winograd": 4, "winograd2": 2}

POINTS = {2: (0, 1, -1), 4: (0, 1, -1, Fraction(1, 2), -2)}


def supports(W_shape: tuple[int, ...], stride: tuple[int, int], dilation: tuple[int, int]) -> str | None:
    """None when Winograd F(m x m, 3 x 3) can run this convolution, else the reason in a sentence."""
    kernel = tuple(W_shape[2:])
    if kernel == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1):
        return None
    return (
        "winograd needs a 3x3 kernel with stride 1 and dilation 1, got kernel "
        f"{kernel} stride {tuple(stride)} dilation {tuple(dilation)}; use algorithm='gemm'"
    )


def _exact_matrices(m: int) -> tuple[list[list[Fraction]], list[list[Fraction]], list[list[Fraction]]]:
    """A^T (m x alpha), G (alpha x 3), B^T (alpha x alpha) for F(m, 3), exact (Toom-Cook, points + inf).

    With g(x) and h(x) of degrees 2 and m - 1, s = g h is evaluated at the points and infinity
    (the leading coefficient) and interpolated back: s = V^-1 [(G g) . (A' h)]; correlation is its
    transpose, y = A'^T [(G g) . (V^-T d)]. Each row j of B^T = V^-T is scaled to coprime integers and
    row j of G divided by the same factor.
    """
    pts = [Fraction(p) for p in POINTS[m]]
    n = m + 2
    at = [[p**i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = [[p**k for k in range(3)] for p in pts] + [[Fraction(0), Fraction(0), Fraction(1)]]
    v = [[p**k for k in range(n)] for p in pts] + [[Fraction(int(k == n - 1)) for k in range(n)]]
    # invert v exactly (Gauss-Jordan over fractions)
    aug = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(v)]
    for col in range(n):
        piv = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        p = aug[col][col]
        aug[col] = [e / p for e in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                f = aug[r][col]
                aug[r] = [a - f * b for a, b in zip(aug[r], aug[col])]
    vinv = [row[n:] for row in aug]
    bt = [[vinv[l][j] for l in range(n)] for j in range(n)]  # B^T = V^-T
    for j in range(n):
        den = 1
        for e in bt[j]:
            den = den * e.denominator // np.gcd(den, e.denominator)
        ints = [int(e * den) for e in bt[j]]
        num = int(np.gcd.reduce([abs(i) for i in ints if i]))
        s = Fraction(den, num)
        bt[j] = [e * s for e in bt[j]]
        g[j] = [e / s for e in g[j]]
    return at, g, bt


@cache
def matrices(m: int, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m, alpha), G (alpha, 3), B^T (alpha, alpha) and kron(G, G) (alpha**2, 9) in ``dtype``.

    For every 1-D signal d (alpha,) and filter g (3,): ``A^T ((G g) * (B^T d)) = correlate(d, g)``.
    Read-only arrays (cached).
    """
    if m not in POINTS:
        raise ValueError(f"winograd tile size m must be 2 or 4, got {m!r}")
    at, g, bt = (np.array([[float(e) for e in row] for row in mat]) for mat in _exact_matrices(m))
    gg = np.kron(g, g)
    out = tuple(np.ascontiguousarray(a, dtype=dtype) for a in (at, g, bt, gg))
    for a in out:
        a.flags.writeable = False
    return out  # type: ignore[return-value]


def _dtype(x: np.ndarray) -> np.dtype:
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"winograd needs float32 or float64 arrays, got {x.dtype}")
    return x.dtype


def _padded_tiles(x: np.ndarray, ph: int, pw: int, th: int, tw: int, m: int, p: int) -> np.ndarray:
    """View (N, C, th, tw, p, p): [n, c, ty, tx, i, j] = xpad[n, c, ty*m + i, tx*m + j], where xpad is x
    with ph rows and pw columns of zeros before it (a negative padding crops) and zeros after it."""
    n, c, h, w = x.shape
    hp, wp = (th - 1) * m + p, (tw - 1) * m + p
    xp = np.zeros((n, c, hp, wp), dtype=x.dtype)
    r0, r1 = max(0, -ph), min(h, hp - ph)  # source rows r land at r + ph
    c0, c1 = max(0, -pw), min(w, wp - pw)
    if r1 > r0 and c1 > c0:
        xp[:, :, r0 + ph : r1 + ph, c0 + pw : c1 + pw] = x[:, :, r0:r1, c0:c1]
    s = xp.strides
    return as_strided(xp, (n, c, th, tw, p, p), (s[0], s[1], s[2] * m, s[3] * m, s[2], s[3]), writeable=False)


def _transform(tiles: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """tiles (N, C, th, tw, p, p), mat (alpha, p) -> (alpha**2, C, N*th*tw): mat @ tile @ mat^T for
    every tile, as one GEMM with kron(mat, mat) (alpha**2, p**2) over the tiles copied out once."""
    n, c, th, tw, p = tiles.shape[:5]
    a = mat.shape[0]
    d = np.ascontiguousarray(tiles.transpose(4, 5, 1, 0, 2, 3)).reshape(p * p, c * n * th * tw)
    return (np.kron(mat, mat) @ d).reshape(a * a, c, n * th * tw)


def _filter_transform(W: np.ndarray, gg: np.ndarray) -> np.ndarray:
    """W (F, C, 3, 3) -> U (alpha**2, F, C) = G g G^T for every (f, c), one GEMM with kron(G, G)."""
    f, c = W.shape[:2]
    return (gg @ W.reshape(f * c, 9).T).reshape(-1, f, c)


def _conv(x: np.ndarray, U: np.ndarray, b: np.ndarray | None, ph: int, pw: int, oh: int, ow: int, m: int):
    """y (N, F, oh, ow) = Winograd correlation of x with the transformed filters U (alpha**2, F, C)."""
    at, _, bt, _ = matrices(m, x.dtype.name)
    n = x.shape[0]
    f = U.shape[1]
    a = m + 2
    th, tw = -(-oh // m), -(-ow // m)
    V = _transform(_padded_tiles(x, ph, pw, th, tw, m, a), bt)  # (T, C, N*P)
    M = np.matmul(U, V)  # (T, F, N*P)
    Y = (np.kron(at, at) @ M.reshape(a * a, -1)).reshape(m, m, f, n, th, tw)  # A^T M A, every tile
    y = Y.transpose(3, 2, 4, 0, 5, 1).reshape(n, f, th * m, tw * m)[:, :, :oh, :ow]
    if b is not None:
        y = y + b.reshape(1, f, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


def forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, pad: tuple[int, int, int, int], m: int = 4
) -> np.ndarray:
    """x: (N, C, H, W), W: (F, C, 3, 3), b: (F,) or None, stride 1, pad (top, bottom, left, right)
    -> y: (N, F, OH, OW), OH = H + top + bottom - 2, OW = W + left + right - 2, in x's dtype."""
    dt = _dtype(x)
    top, bottom, left, right = pad
    oh, ow = x.shape[2] + top + bottom - 2, x.shape[3] + left + right - 2
    _, _, _, gg = matrices(m, dt.name)
    U = _filter_transform(np.asarray(W, dtype=dt), gg)
    bb = None if b is None else np.asarray(b, dtype=dt)
    return _conv(x, U, bb, top, left, oh, ow, m)


def backward(
    dout: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    pad: tuple[int, int, int, int],
    need_dx: bool = True,
    m: int = 4,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dout: (N, F, OH, OW) -> dx (N, C, H, W) or None, dW (F, C, 3, 3), db (F,), in x's dtype;
    pad (top, bottom, left, right), of which bottom and right are already in dout's size."""
    dt = _dtype(x)
    ph, _, pw, _ = pad  # top, left: where the tiles start
    dout = np.asarray(dout, dtype=dt)
    W = np.asarray(W, dtype=dt)
    n, c, h, w = x.shape
    f = W.shape[0]
    oh, ow = dout.shape[2:]
    at, _, bt, gg = matrices(m, dt.name)
    a = m + 2
    dx = None
    if need_dx:  # full correlation of dout with W flipped and transposed, padding 2 - top, 2 - left
        Wt = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx = _conv(dout, _filter_transform(Wt, gg), None, 2 - ph, 2 - pw, h, w, m)
    th, tw = -(-oh // m), -(-ow // m)
    V = _transform(_padded_tiles(x, ph, pw, th, tw, m, a), bt)  # (T, C, N*P)
    dM = _transform(_padded_tiles(dout, 0, 0, th, tw, m, m), np.ascontiguousarray(at.T))  # (T, F, N*P)
    dU = dM @ V.transpose(0, 2, 1)  # (T, F, C)
    dW = (gg.T @ dU.reshape(a * a, f * c)).reshape(3, 3, f, c).transpose(2, 3, 0, 1)
    return dx, np.ascontiguousarray(dW), dout.sum(axis=(0, 2, 3))
