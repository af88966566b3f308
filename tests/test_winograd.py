"""Winograd F(4x4,3x3) and F(2x2,3x3), NumPy and numba modules, against the float64 direct reference.

One body per behaviour, run on both modules, both tile sizes and both dtypes; the tolerance is the
error bound each module states (:data:`ERROR_BOUND`, per (m, dtype)). The modules take the contract's
pad, (top, bottom, left, right); the tests draw symmetric (h, w) pairs and pass them through as_pad4.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv._shapes import as_pad4
from fastconv.backends.numba import runtime
from fastconv.backends.numba import winograd as numba_winograd
from fastconv.backends.numpy import winograd as numpy_winograd
from fastconv.testing import reference

MODULES = {"numpy": numpy_winograd, "numba": numba_winograd}
CASES = [(name, m, dt) for name in MODULES for m in (4, 2) for dt in ("float32", "float64")]
CASE_IDS = [f"{name}-F{m}-{dt}" for name, m, dt in CASES]


def rel_err(got: np.ndarray, ref: np.ndarray, terms: int = 1) -> float:
    """max |got - ref| / max(max |ref|, sqrt(terms)), in float64.

    ``terms``: products summed per output. With standard-normal inputs an output has standard deviation
    sqrt(terms), and on big arrays max |ref| is several times that, so this is the stated max relative
    error there; on tiny arrays (one output, say) a sum that happens to cancel would make the plain
    relative error meaningless, and sqrt(terms) takes over as the scale.
    """
    scale = max(float(np.abs(ref).max()), float(np.sqrt(terms)))
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / scale)


def terms(x: np.ndarray, W: np.ndarray, dout: np.ndarray) -> tuple[int, int, int, int]:
    """Products summed per output of y, dx, dW, db."""
    n, c = x.shape[:2]
    f = W.shape[0]
    pixels = n * dout.shape[2] * dout.shape[3]
    return 9 * c, 9 * f, pixels, pixels


def draw_problem(seed: int, n, c, f, h, w, ph, pw, dtype):
    """Standard-normal x, W, b, dout for a 3x3 stride-1 convolution, in ``dtype``."""
    rng = np.random.default_rng(seed)
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    dout = rng.standard_normal((n, f, oh, ow)).astype(dtype)
    return x, W, b, dout


@st.composite
def problems(draw):
    """(N, C, F, H, W, ph, pw) with N 1-3, C, F 1-5, H, W 1-12, pads 0-2 and an output of at least 1x1."""
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, 3 - 2 * ph), 12))
    w = draw(st.integers(max(1, 3 - 2 * pw), 12))
    return draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)), h, w, ph, pw


@pytest.mark.parametrize(("name", "m", "dtype"), CASES, ids=CASE_IDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=problems(), seed=st.integers(0, 2**32 - 1))
def test_winograd_matches_the_float64_direct_convolution_within_the_stated_bound(name, m, dtype, shape, seed):
    mod = MODULES[name]
    x, W, b, dout = draw_problem(seed, *shape, dtype)
    pad = shape[5:]
    bound = mod.ERROR_BOUND[(m, dtype)]
    y = mod.forward(x, W, b, as_pad4(pad), m=m)
    dx, dW, db = mod.backward(dout, x, W, as_pad4(pad), m=m)
    y_ref = reference.conv2d(x, W, b, (1, 1), pad)
    dx_ref, dW_ref, db_ref = reference.conv2d_backward(dout, x, W, (1, 1), pad)
    for got, ref, k in zip((y, dx, dW, db), (y_ref, dx_ref, dW_ref, db_ref), terms(x, W, dout)):
        assert got.dtype == np.dtype(dtype)
        assert got.shape == ref.shape
        assert rel_err(got, ref, k) <= bound


@pytest.mark.parametrize(("name", "m", "dtype"), CASES, ids=CASE_IDS)
def test_winograd_handles_padding_larger_than_the_kernel_and_unequal_pads(name, m, dtype):
    mod = MODULES[name]
    pad = (3, 5)
    x, W, b, dout = draw_problem(zlib.crc32(b"big-pad"), 2, 3, 4, 2, 7, *pad, dtype)
    dx, dW, db = mod.backward(dout, x, W, as_pad4(pad), m=m)
    dx_ref, dW_ref, db_ref = reference.conv2d_backward(dout, x, W, (1, 1), pad)
    y_ref = reference.conv2d(x, W, b, (1, 1), pad)
    y = mod.forward(x, W, b, as_pad4(pad), m=m)
    for got, ref, k in zip((y, dx, dW, db), (y_ref, dx_ref, dW_ref, db_ref), terms(x, W, dout)):
        assert got.shape == ref.shape
        assert rel_err(got, ref, k) <= mod.ERROR_BOUND[(m, dtype)]


@pytest.mark.parametrize(("name", "m", "dtype"), CASES, ids=CASE_IDS)
def test_winograd_gives_the_same_bits_run_to_run(name, m, dtype, rng):
    """On two threads (numba), so that dW adds the partial sums of two shares of images."""
    import fastconv

    mod = MODULES[name]
    x, W, b, dout = draw_problem(int(rng.integers(2**32)), 7, 5, 6, 11, 10, 1, 1, dtype)
    with fastconv.configure(threads=2):
        y1, y2 = mod.forward(x, W, b, (1, 1, 1, 1), m=m), mod.forward(x, W, b, (1, 1, 1, 1), m=m)
        g1, g2 = mod.backward(dout, x, W, (1, 1, 1, 1), m=m), mod.backward(dout, x, W, (1, 1, 1, 1), m=m)
    assert y1.tobytes() == y2.tobytes()
    for a, b2 in zip(g1, g2):
        assert a.tobytes() == b2.tobytes()


@pytest.mark.parametrize("name", MODULES)
def test_forward_without_bias_and_with_non_contiguous_inputs(name, rng):
    mod = MODULES[name]
    x, W, _, _ = draw_problem(int(rng.integers(2**32)), 3, 4, 5, 14, 9, 1, 2, "float32")
    x_view = np.asfortranarray(x)[:, :, ::-1]  # neither C- nor F-ordered
    y = mod.forward(x_view, W.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2), None, (1, 1, 2, 2))
    y_ref = reference.conv2d(x_view, W, None, (1, 1), (1, 2))
    assert y.dtype == np.float32
    assert rel_err(y, y_ref, 9 * 4) <= mod.ERROR_BOUND[(4, "float32")]


@pytest.mark.parametrize("name", MODULES)
def test_backward_without_dx_returns_none_and_the_same_dW_db(name, rng):
    mod = MODULES[name]
    x, W, _, dout = draw_problem(int(rng.integers(2**32)), 2, 3, 4, 9, 9, 1, 0, "float32")
    dx, dW, db = mod.backward(dout, x, W, (1, 1, 0, 0), need_dx=False)
    _, dW_all, db_all = mod.backward(dout, x, W, (1, 1, 0, 0))
    assert dx is None
    np.testing.assert_array_equal(dW, dW_all)
    np.testing.assert_array_equal(db, db_all)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize(
    ("W_shape", "stride", "dilation", "named"),
    [
        ((4, 3, 5, 5), (1, 1), (1, 1), "kernel (5, 5)"),
        ((4, 3, 3, 3), (2, 2), (1, 1), "stride (2, 2)"),
        ((4, 3, 3, 3), (1, 1), (2, 2), "dilation (2, 2)"),
        ((4, 3, 3, 1), (1, 1), (1, 1), "kernel (3, 1)"),
    ],
)
def test_supports_refuses_other_convolutions_with_a_reason(name, W_shape, stride, dilation, named):
    reason = MODULES[name].supports(W_shape, stride, dilation)
    assert isinstance(reason, str)
    assert "3x3 kernel with stride 1 and dilation 1" in reason
    assert named in reason


@pytest.mark.parametrize("name", MODULES)
def test_supports_accepts_3x3_stride_1(name):
    assert MODULES[name].supports((8, 4, 3, 3), (1, 1), (1, 1)) is None


@pytest.mark.parametrize("name", MODULES)
def test_winograd_leaves_its_inputs_unchanged(name, rng):
    mod = MODULES[name]
    x, W, b, dout = draw_problem(int(rng.integers(2**32)), 3, 4, 5, 10, 8, 2, 1, "float64")
    before = [a.copy() for a in (x, W, b, dout)]
    mod.forward(x, W, b, (2, 2, 1, 1))
    mod.backward(dout, x, W, (2, 2, 1, 1))
    for a, a0 in zip((x, W, b, dout), before):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("m", (2, 4))
def test_transform_matrices_compute_a_1d_correlation_exactly(m, rng):
    at, g, bt, gg = numpy_winograd.matrices(m)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(gg, np.kron(g, g))


def test_numba_kernels_compile_into_the_per_user_cache():
    """The kernels are defined with runtime.cached_njit: their cache is runtime.CACHE_DIR."""
    from pathlib import Path

    for kernel in (numba_winograd.tile_transform, numba_winograd.untile):
        cache_path = Path(kernel._cache._cache_path)
        assert cache_path.is_relative_to(Path(runtime.CACHE_DIR))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "m", "dtype"), CASES, ids=CASE_IDS)
def test_stated_bound_holds_on_a_full_size_layer(name, m, dtype):
    """x(64,32,13,13) W(64,32,3,3) (S3), against torch float64 (the direct loops are too slow here)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    mod = MODULES[name]
    x, W, b, dout = draw_problem(3, 64, 32, 64, 13, 13, 0, 0, "float64")
    tx, tW, tb, td = (torch.from_numpy(a) for a in (x, W, b, dout))
    y_ref = F.conv2d(tx, tW, tb).numpy()
    grads = torch.ops.aten.convolution_backward(
        td, tx, tW, [64], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    xs, Ws, bs, ds = (a.astype(dtype) for a in (x, W, b, dout))
    dx, dW, _ = mod.backward(ds, xs, Ws, (0, 0, 0, 0), m=m)
    bound = mod.ERROR_BOUND[(m, dtype)]
    assert rel_err(mod.forward(xs, Ws, bs, (0, 0, 0, 0), m=m), y_ref) <= bound
    assert rel_err(dx, grads[0].numpy()) <= bound
    assert rel_err(dW, grads[1].numpy()) <= bound
