"""fastconv.compat.cs231n against float64 loop references of CS231n assignment 2's naive layers.

The references below follow the assignment's ``conv_forward_naive`` / ``conv_backward_naive`` /
``max_pool_forward_naive`` / ``max_pool_backward_naive`` semantics (zero padding on four sides, floor
output sizes, the pool gradient to each window's first maximum by ``np.argmax``); they share no code
with fastconv. The dtype rules are checked against the assignment's own strided convolution and
pools as benchmarks/compat_cs231n.py writes them (its baseline, itself checked against the
references here).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.compat import cs231n

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "compat_cs231n.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("_compat_cs231n_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

# ---------------------------------------------------------------------------------------------
# float64 loop references of the assignment's naive layers
# ---------------------------------------------------------------------------------------------


def conv_forward_naive(x, w, b, conv_param):
    """out[n, f, i, j] = b[f] + sum over (c, p, q) of xpad[n, c, i*s + p, j*s + q] * w[f, c, p, q]."""
    s, p = conv_param["stride"], conv_param["pad"]
    x, w, b = (np.asarray(a, dtype=np.float64) for a in (x, w, b))
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = 1 + (h + 2 * p - hh) // s, 1 + (wd + 2 * p - ww) // s
    out = np.empty((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * s : i * s + hh, j * s : j * s + ww]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, dict(conv_param))


def conv_backward_naive(dout, cache):
    """The adjoint of conv_forward_naive: every output position's dout spread back over its window."""
    x, w, b, conv_param = cache
    s, p = conv_param["stride"], conv_param["pad"]
    dout = np.asarray(dout, dtype=np.float64)
    h, wd = x.shape[2:]
    hh, ww = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * s, i * s + hh), slice(j * s, j * s + ww)
            g = dout[:, :, i, j]  # (N, F)
            dw += np.tensordot(g, xp[:, :, rows, cols], axes=([0], [0]))
            dxp[:, :, rows, cols] += np.tensordot(g, w, axes=([1], [0]))
    return dxp[:, :, p : p + h, p : p + wd], dw, dout.sum(axis=(0, 2, 3))


def max_pool_forward_naive(x, pool_param):
    """out[n, c, i, j] = max of x[n, c, i*s : i*s + ph, j*s : j*s + pw]; no padding, floor sizes."""
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    oh, ow = 1 + (h - ph) // s, 1 + (w - pw) // s
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s : i * s + ph, j * s : j * s + pw].max(axis=(2, 3))
    return out, (x, dict(pool_param))


def max_pool_backward_naive(dout, cache):
    """Each window's dout to its first maximum in row-major order (np.argmax); overlaps add up."""
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dout = np.asarray(dout, dtype=np.float64)
    n, c = x.shape[:2]
    dx = np.zeros_like(x)
    nn, cc = np.indices((n, c))
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            window = x[:, :, i * s : i * s + ph, j * s : j * s + pw].reshape(n, c, -1)
            k = np.argmax(window, axis=2)
            dx[nn, cc, i * s + k // pw, j * s + k % pw] += dout[:, :, i, j]
    return dx


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Central differences of sum(f(x) * df) in each element of x (x perturbed in place, restored)."""
    grad = np.zeros_like(x)
    for ix in np.ndindex(*x.shape):
        old = x[ix]
        x[ix] = old + h
        pos = np.array(f(x), dtype=np.float64)
        x[ix] = old - h
        neg = np.array(f(x), dtype=np.float64)
        x[ix] = old
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
    return grad


def assert_close(got, want, dtype, what=""):
    """Within float32's or float64's rounding of the largest reference value."""
    assert isinstance(got, np.ndarray), f"{what}: got {type(got).__name__}, not a NumPy array"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}[np.dtype(dtype)]
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol * scale, err_msg=what)


# ---------------------------------------------------------------------------------------------
# against the references
# ---------------------------------------------------------------------------------------------

# name: (x shape, w shape, stride, pad)
CONV_CASES = {
    "padded 3x3": ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1),
    "stride 2, not tiling": ((2, 3, 8, 7), (4, 3, 3, 3), 2, 1),
    "non-square kernel and image": ((2, 2, 7, 9), (3, 2, 2, 4), 1, 0),
    "stride > kernel": ((2, 3, 9, 10), (2, 3, 2, 2), 3, 0),
    "1x1": ((3, 4, 5, 5), (6, 4, 1, 1), 1, 0),
    "kernel = padded image": ((1, 2, 4, 4), (2, 2, 6, 6), 1, 1),
    "pad 2 stride 3": ((2, 1, 6, 8), (2, 1, 3, 3), 3, 2),
    "ThreeLayerConvNet 7x7 pad 3": ((2, 3, 32, 32), (32, 3, 7, 7), 1, 3),
}

# name: (x shape, pool_height, pool_width, stride)
POOL_CASES = {
    "2x2/2 ThreeLayerConvNet": ((2, 32, 32, 32), 2, 2, 2),
    "3x3/2 overlapping": ((2, 3, 9, 9), 3, 3, 2),
    "3x3/1 overlapping": ((2, 2, 6, 7), 3, 3, 1),
    "3x2/1 non-square": ((2, 3, 7, 6), 3, 2, 1),
    "3x2/2 non-square": ((2, 2, 9, 8), 3, 2, 2),
    "2x3/2 non-square, not tiling": ((1, 3, 8, 8), 2, 3, 2),
    "2x2/2 not tiling": ((2, 3, 7, 9), 2, 2, 2),
    "2x2/3 gaps": ((2, 3, 10, 11), 2, 2, 3),
    "1x2/4 gaps": ((2, 2, 9, 9), 1, 2, 4),
    "pool = image": ((2, 3, 5, 4), 5, 4, 1),
    "1x1/1": ((1, 2, 3, 3), 1, 1, 1),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_naive(backend, rng, dtype, case):
    xs, ws, stride, pad = CONV_CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    conv_param = {"stride": stride, "pad": pad}
    want, ref_cache = conv_forward_naive(x, w, b, conv_param)
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(x, w, b, conv_param)
    assert out.dtype == dtype and cache.backend == backend
    assert_close(out, want, dtype, "out")
    dout = rng.standard_normal(want.shape).astype(dtype)
    dx, dw, db = cs231n.conv_backward_fast(dout, cache)
    for name, got, ref in zip(("dx", "dw", "db"), (dx, dw, db), conv_backward_naive(dout, ref_cache)):
        assert got.dtype == dtype
        assert_close(got, ref, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool_matches_naive(backend, rng, dtype, case):
    xs, ph, pw, stride = POOL_CASES[case]
    x = rng.standard_normal(xs).astype(dtype)  # continuous values: no ties
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    want, ref_cache = max_pool_forward_naive(x, pool_param)
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    assert out.dtype == dtype and cache.backend == backend
    np.testing.assert_array_equal(out, want.astype(dtype))  # a max is exact
    dout = rng.standard_normal(want.shape).astype(dtype)
    dx = cs231n.max_pool_backward_fast(dout, cache)
    assert dx.dtype == dtype
    assert_close(dx, max_pool_backward_naive(dout, ref_cache), dtype, "dx")


_HYP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_shapes(draw):
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    hh, ww = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pad, stride = draw(st.integers(0, 3)), draw(st.integers(1, 4))
    h = draw(st.integers(max(1, hh - 2 * pad), 12))
    wd = draw(st.integers(max(1, ww - 2 * pad), 12))
    return (n, c, h, wd), (f, c, hh, ww), stride, pad


@st.composite
def pool_shapes(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    ph, pw = draw(st.integers(1, h)), draw(st.integers(1, w))
    return (n, c, h, w), ph, pw, draw(st.integers(1, 5))


@_HYP
@given(shapes=conv_shapes(), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float32", "float64"]))
def test_conv_drawn_shapes(backend, shapes, seed, dtype):
    xs, ws, stride, pad = shapes
    g = np.random.default_rng(seed)
    x, w, b = (g.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    conv_param = {"stride": stride, "pad": pad}
    want, ref_cache = conv_forward_naive(x, w, b, conv_param)
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(x, w, b, conv_param)
    assert_close(out, want, dtype, f"out {shapes}")
    dout = g.standard_normal(want.shape).astype(dtype)
    got = cs231n.conv_backward_fast(dout, cache)
    for name, gr, ref in zip(("dx", "dw", "db"), got, conv_backward_naive(dout, ref_cache)):
        assert_close(gr, ref, dtype, f"{name} {shapes}")


@_HYP
@given(shapes=pool_shapes(), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float32", "float64"]))
def test_max_pool_drawn_shapes(backend, shapes, seed, dtype):
    xs, ph, pw, stride = shapes
    g = np.random.default_rng(seed)
    # few distinct values: ties are frequent, and the first maximum must still get the gradient
    x = g.integers(-2, 3, xs).astype(dtype)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    want, ref_cache = max_pool_forward_naive(x, pool_param)
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    np.testing.assert_array_equal(out, want.astype(dtype))
    dout = g.standard_normal(want.shape).astype(dtype)
    dx = cs231n.max_pool_backward_fast(dout, cache)
    assert_close(dx, max_pool_backward_naive(dout, ref_cache), dtype, f"dx {shapes}")


# ---------------------------------------------------------------------------------------------
# ties, gradients, the assignment's gradient check
# ---------------------------------------------------------------------------------------------


def test_max_pool_ties_give_the_whole_gradient_to_the_first_maximum(backend):
    # one 2x2/2 window of four equal values, one with a tie in its second row, one all zeros (a ReLU's)
    x = np.array([[[[1.0, 1.0, 0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 5.0, 5.0, 0.0, 0.0]]]])
    dout = np.array([[[[2.0, 4.0, 8.0]]]])
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    np.testing.assert_array_equal(out, [[[[1.0, 5.0, 0.0]]]])
    dx = cs231n.max_pool_backward_fast(dout, cache)
    want = np.zeros_like(x)
    want[0, 0, 0, 0] = 2.0  # the first of four equal maxima, row-major
    want[0, 0, 1, 2] = 4.0  # 5 at (1, 2) comes before 5 at (1, 3)
    want[0, 0, 0, 4] = 8.0  # all zeros: the first
    np.testing.assert_array_equal(dx, want)
    # the assignment's 'reshape' path splits each tie equally instead: same sum per window
    split = bench.reshape_pool_backward(dout, bench.reshape_pool_forward(x, pool_param)[1])
    assert split[0, 0, 0, 0] == 0.5 and split[0, 0, 1, 2] == 2.0 and split[0, 0, 0, 4] == 2.0
    windows = (np.s_[..., 0:2], np.s_[..., 2:4], np.s_[..., 4:6])
    assert [dx[s].sum() for s in windows] == [split[s].sum() for s in windows]


def test_max_pool_ties_after_relu_vanish_behind_relu_backward(backend, rng):
    # conv - relu - pool: zeros tie in many windows; relu_backward zeroes whatever the pool sent there
    a = rng.standard_normal((2, 4, 8, 8)) - 0.8  # mostly negative: many all-zero windows after the ReLU
    r = np.maximum(0, a)
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    dout = rng.standard_normal((2, 4, 4, 4))
    with fastconv.use_backend(backend):
        _, cache = cs231n.max_pool_forward_fast(r, pool_param)
    ours = cs231n.max_pool_backward_fast(dout, cache) * (a > 0)
    split = bench.reshape_pool_backward(dout, bench.reshape_pool_forward(r, pool_param)[1]) * (a > 0)
    assert (r.reshape(2, 4, 4, 2, 4, 2).max(axis=(3, 5)) == 0).sum() > 5  # the case is exercised
    np.testing.assert_allclose(ours, split, rtol=0, atol=1e-15)


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (2, 0)])
def test_conv_numerical_gradient(backend, rng, stride, pad):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    conv_param = {"stride": stride, "pad": pad}
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(x, w, b, conv_param)
        dout = rng.standard_normal(out.shape)
        dx, dw, db = cs231n.conv_backward_fast(dout, cache)
        num = (
            eval_numerical_gradient_array(
                lambda v: cs231n.conv_forward_fast(v, w, b, conv_param)[0], x, dout
            ),
            eval_numerical_gradient_array(
                lambda v: cs231n.conv_forward_fast(x, v, b, conv_param)[0], w, dout
            ),
            eval_numerical_gradient_array(
                lambda v: cs231n.conv_forward_fast(x, w, v, conv_param)[0], b, dout
            ),
        )
    for name, got, want in zip(("dx", "dw", "db"), (dx, dw, db), num):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("ph,pw,stride", [(2, 2, 2), (3, 3, 2), (3, 2, 1), (2, 2, 3)])
def test_max_pool_numerical_gradient(backend, rng, ph, pw, stride):
    x = rng.standard_normal((2, 2, 7, 7))
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
        dout = rng.standard_normal(out.shape)
        dx = cs231n.max_pool_backward_fast(dout, cache)
        num = eval_numerical_gradient_array(lambda v: cs231n.max_pool_forward_fast(v, pool_param)[0], x, dout)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# dtypes, as the assignment's own code gives them
# ---------------------------------------------------------------------------------------------


def _fix(dt):
    """The adapter's rule: NumPy's dtype, float64 where that is an integer or bool dtype."""
    dt = np.dtype(dt)
    return dt if dt.kind == "f" else np.dtype(np.float64)


# (x, w, b, dout)
DTYPE_MIXES = [
    ("float32", "float32", "float32", "float32"),
    ("float64", "float64", "float64", "float64"),
    ("float32", "float64", "float32", "float32"),
    ("float64", "float32", "float32", "float32"),
    ("float32", "float32", "float64", "float32"),  # a wider bias widens out only
    ("float32", "float32", "float32", "float64"),  # a wider dout widens every gradient
    ("float16", "float16", "float16", "float16"),
    ("float16", "float32", "float16", "float16"),
    ("int64", "float32", "float32", "float32"),  # NumPy: int64 with float32 is float64
    ("int8", "float32", "float32", "float32"),  # NumPy: int8 with float32 is float32
    ("int64", "int64", "int64", "int64"),  # integer everywhere: float64 (the assignment's: int64)
    ("uint8", "int32", "int16", "float32"),
    ("bool", "float32", "float32", "float32"),
]


@pytest.mark.parametrize("xd,wd,bd,dd", DTYPE_MIXES)
def test_conv_dtypes_follow_the_assignment(backend, rng, xd, wd, bd, dd):
    x = (3 * rng.standard_normal((2, 2, 5, 5))).astype(xd)
    w = (3 * rng.standard_normal((3, 2, 3, 3))).astype(wd)
    b = (3 * rng.standard_normal(3)).astype(bd)
    conv_param = {"stride": 1, "pad": 1}
    base_out, base_cache = bench.strided_conv_forward(x, w, b, conv_param)
    dout = (3 * rng.standard_normal(base_out.shape)).astype(dd)
    base_grads = bench.strided_conv_backward(dout, base_cache)
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(x, w, b, conv_param)
    grads = cs231n.conv_backward_fast(dout, cache)
    # the assignment's dtypes, by its code: out from w.dot(x_cols) + b, db = dout.sum(...),
    # dw = dout_reshaped.dot(x_cols.T), dx from w.T.dot(dout_reshaped)
    assert base_out.dtype == np.result_type(x, w, b)
    assert [g.dtype for g in base_grads] == [np.result_type(w, dout), np.result_type(dout, x), dout.dtype]
    assert out.dtype == _fix(base_out.dtype)
    assert [g.dtype for g in grads] == [_fix(g.dtype) for g in base_grads]
    want, ref_cache = conv_forward_naive(x, w, b, conv_param)
    loose = 2e-2 if "float16" in (xd, wd, bd, dd) else 1e-4  # float16 storage rounds to 3 digits
    np.testing.assert_allclose(out, want, rtol=loose, atol=loose * np.abs(want).max())
    for got, ref in zip(grads, conv_backward_naive(dout, ref_cache)):
        np.testing.assert_allclose(got, ref, rtol=loose, atol=loose * np.abs(ref).max())


@pytest.mark.parametrize(
    "xd,dd",
    [
        ("float32", "float32"),
        ("float32", "float64"),
        ("float64", "float32"),
        ("float16", "float32"),
        ("int64", "float32"),
    ],
)
@pytest.mark.parametrize("pool", [(2, 2, 2), (3, 3, 2)])  # the assignment's reshape and im2col paths
def test_max_pool_dtypes_follow_the_assignment(backend, rng, xd, dd, pool):
    x = (10 * rng.standard_normal((2, 3, 8, 8))).astype(xd)
    if pool == (3, 3, 2):
        x = x[:, :, :7, :7]
    pool_param = dict(zip(("pool_height", "pool_width", "stride"), pool))
    base_out, base_cache = bench.baseline_pool_forward(x, pool_param)
    assert base_cache[0] == ("reshape" if pool == (2, 2, 2) else "im2col")
    dout = rng.standard_normal(base_out.shape).astype(dd)
    assert base_out.dtype == x.dtype
    if x.dtype.kind == "f":  # dx is zeros_like of x's blocks or columns
        assert bench.baseline_pool_backward(dout, base_cache).dtype == x.dtype
    elif pool == (2, 2, 2):  # the assignment's reshape backward divides in place: an integer x fails
        with pytest.raises(TypeError):
            bench.baseline_pool_backward(dout, base_cache)
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    dx = cs231n.max_pool_backward_fast(dout, cache)
    assert out.dtype == _fix(x.dtype) and dx.dtype == _fix(x.dtype)
    np.testing.assert_array_equal(out, base_out.astype(out.dtype))
    np.testing.assert_allclose(
        dx, max_pool_backward_naive(dout, (np.asarray(x, np.float64), pool_param)), rtol=1e-3
    )


@pytest.mark.parametrize("dtype", [np.complex128, object, "datetime64[s]"])
def test_unsupported_dtypes_are_refused(dtype):
    x = np.zeros((1, 1, 3, 3), dtype=dtype)
    w = np.zeros((1, 1, 2, 2))
    with pytest.raises(TypeError, match=r"^x must have a floating \(or integer\) dtype"):
        cs231n.conv_forward_fast(x, w, np.zeros(1), {"stride": 1, "pad": 0})
    with pytest.raises(TypeError, match=r"^x must have a floating"):
        cs231n.max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 1})


# ---------------------------------------------------------------------------------------------
# nothing is modified; the cache holds copies of the parameter dicts
# ---------------------------------------------------------------------------------------------


def _frozen(a):
    a = a.copy()
    a.setflags(write=False)  # any write into an input would raise
    return a


def test_conv_leaves_inputs_and_dict_alone(backend, rng):
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    conv_param = {"stride": 2, "pad": 1, "extra": "kept"}
    saved = [a.copy() for a in (x, w, b)], copy.deepcopy(conv_param)
    fx, fw, fb = _frozen(x), _frozen(w), _frozen(b)
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(fx, fw, fb, conv_param)
    dout = _frozen(rng.standard_normal(out.shape))
    dout_saved = dout.copy()
    want = cs231n.conv_backward_fast(dout, cache)
    for a, s in zip((fx, fw, fb), saved[0]):
        np.testing.assert_array_equal(a, s)
    np.testing.assert_array_equal(dout, dout_saved)
    assert conv_param == saved[1]
    assert all(a is b for a, b in zip(cache[:3], (fx, fw, fb)))  # the assignment's cache starts so too
    assert cache[3] == conv_param and cache[3] is not conv_param
    # the student changes the dict after the forward: the backward still uses the forward's
    conv_param["stride"], conv_param["pad"] = 1, 0
    conv_param.clear()
    again = cs231n.conv_backward_fast(dout, cache)
    for g1, g2 in zip(want, again):
        np.testing.assert_array_equal(g1, g2)
    # the results are fresh arrays: a student may update them in place
    for g in (*want, out):
        assert g.flags.writeable and not any(np.shares_memory(g, a) for a in (fx, fw, fb, dout))


def test_max_pool_leaves_inputs_and_dict_alone(backend, rng):
    x = _frozen(rng.standard_normal((2, 3, 7, 7)))
    x_saved = x.copy()
    pool_param = {"pool_height": 3, "pool_width": 2, "stride": 2}
    with fastconv.use_backend(backend):
        out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    dout = _frozen(rng.standard_normal(out.shape))
    want = cs231n.max_pool_backward_fast(dout, cache)
    np.testing.assert_array_equal(x, x_saved)
    assert pool_param == {"pool_height": 3, "pool_width": 2, "stride": 2}
    assert cache.pool_param == pool_param and cache.pool_param is not pool_param
    pool_param.update(pool_height=1, pool_width=1, stride=1)
    np.testing.assert_array_equal(cs231n.max_pool_backward_fast(dout, cache), want)


def test_inputs_perturbed_in_place_between_calls_are_read_afresh(rng):
    # eval_numerical_gradient_array changes x in place between forwards: nothing stale may be kept
    x = rng.standard_normal((1, 2, 4, 4))
    w, b = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal(2)
    first = cs231n.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})[0]
    x[0, 0, 1, 1] += 1.0
    second = cs231n.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})[0]
    assert not np.array_equal(first, second)
    assert_close(second, conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})[0], "float64")


# ---------------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------------

_X, _W, _B = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(4)
_CP = {"stride": 1, "pad": 1}
_PP = {"pool_height": 2, "pool_width": 2, "stride": 2}

CONV_ERRORS = [
    ((_X, _W, _B, {"stride": 1}), ValueError, r"conv_param has no key 'pad'.*'stride' and 'pad'"),
    ((_X, _W, _B, {"pad": 1}), ValueError, r"conv_param has no key 'stride'"),
    (
        (_X, _W, _B, None),
        TypeError,
        r"conv_param must be a dict with the keys 'stride' and 'pad', got NoneType",
    ),
    (
        (_X, _W, _B, {"stride": 1.0, "pad": 1}),
        TypeError,
        r"conv_param\['stride'\] must be an int, got float 1.0",
    ),
    ((_X, _W, _B, {"stride": True, "pad": 1}), TypeError, r"conv_param\['stride'\] must be an int, got bool"),
    ((_X, _W, _B, {"stride": 1, "pad": "1"}), TypeError, r"conv_param\['pad'\] must be an int, got str"),
    ((_X, _W, _B, {"stride": 0, "pad": 1}), ValueError, r"conv_param\['stride'\] must be at least 1, got 0"),
    (
        (_X, _W, _B, {"stride": -2, "pad": 1}),
        ValueError,
        r"conv_param\['stride'\] must be at least 1, got -2",
    ),
    ((_X, _W, _B, {"stride": 1, "pad": -1}), ValueError, r"conv_param\['pad'\] must be at least 0, got -1"),
    ((_X, np.zeros((4, 2, 3, 3)), _B, _CP), ValueError, r"channel mismatch: x \(2, 3, 5, 5\) has C = 3"),
    ((_X[0], _W, _B, _CP), ValueError, r"x must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)"),
    ((_X, _W[0], _B, _CP), ValueError, r"w must be 4-D \(F, C, HH, WW\), got shape"),
    ((_X, _W, _B[None], _CP), ValueError, r"b must be 1-D \(F,\), got shape \(1, 4\)"),
    ((_X, _W, np.zeros(3), _CP), ValueError, r"b must have shape \(4,\)"),
    (
        (_X, np.zeros((4, 3, 8, 8)), _B, _CP),
        ValueError,
        r"filter 8x8 of w .* larger than x .* conv_param\['pad'\] = 1",
    ),
    ((_X.tolist(), _W, _B, _CP), TypeError, r"x must be a NumPy array .*numpy.asarray"),
    ((_X, _W, 0.0, _CP), TypeError, r"b must be a NumPy array"),
]


@pytest.mark.parametrize("args,exc,match", CONV_ERRORS)
def test_conv_forward_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        cs231n.conv_forward_fast(*args)


POOL_ERRORS = [
    (
        {"pool_height": 2, "stride": 2},
        ValueError,
        r"pool_param has no key 'pool_width'.*'pool_height', 'pool_width'",
    ),
    ({"pool_width": 2, "pool_height": 2}, ValueError, r"pool_param has no key 'stride'"),
    ([2, 2, 2], TypeError, r"pool_param must be a dict"),
    (
        {"pool_height": 2, "pool_width": 2.5, "stride": 2},
        TypeError,
        r"pool_param\['pool_width'\] must be an int",
    ),
    (
        {"pool_height": 2, "pool_width": 2, "stride": 0},
        ValueError,
        r"pool_param\['stride'\] must be at least 1",
    ),
    (
        {"pool_height": 0, "pool_width": 2, "stride": 1},
        ValueError,
        r"pool_param\['pool_height'\] must be at least 1",
    ),
    (
        {"pool_height": 6, "pool_width": 2, "stride": 1},
        ValueError,
        r"pool 6x2 .* larger than x \(2, 3, 5, 5\)'s 5x5",
    ),
    ({"pool_height": 2, "pool_width": 6, "stride": 1}, ValueError, r"pool 2x6 .* larger than"),
]


@pytest.mark.parametrize("pool_param,exc,match", POOL_ERRORS)
def test_max_pool_forward_errors(pool_param, exc, match):
    with pytest.raises(exc, match=match):
        cs231n.max_pool_forward_fast(_X, pool_param)
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        cs231n.max_pool_forward_fast(_X[0], _PP)


def test_backward_errors(rng):
    out, conv_cache = cs231n.conv_forward_fast(_X, _W, _B, _CP)
    pooled, pool_cache = cs231n.max_pool_forward_fast(_X, _PP)
    with pytest.raises(
        ValueError,
        match=r"dout must have the shape of conv_forward_fast's output, \(2, 4, 5, 5\), got \(2, 4, 5, 4\)",
    ):
        cs231n.conv_backward_fast(out[..., :4], conv_cache)
    with pytest.raises(ValueError, match=r"dout must be 4-D"):
        cs231n.conv_backward_fast(out[0], conv_cache)
    with pytest.raises(
        ValueError, match=r"dout must have the shape of max_pool_forward_fast's output, \(2, 3, 2, 2\)"
    ):
        cs231n.max_pool_backward_fast(np.zeros((2, 3, 2, 3)), pool_cache)
    with pytest.raises(
        TypeError, match=r"cache must be the cache conv_forward_fast .* returned, got _PoolCache"
    ):
        cs231n.conv_backward_fast(out, pool_cache)
    with pytest.raises(
        TypeError, match=r"cache must be the cache max_pool_forward_fast .* returned, got tuple"
    ):
        cs231n.max_pool_backward_fast(pooled, ("reshape", (_X, None, pooled)))
    with pytest.raises(TypeError, match=r"dout must be a NumPy array"):
        cs231n.conv_backward_fast(out.tolist(), conv_cache)


# ---------------------------------------------------------------------------------------------
# the drop-in: names, backend selection, arrays in and out
# ---------------------------------------------------------------------------------------------


def test_star_import_gives_exactly_the_four_functions():
    assert cs231n.__all__ == [
        "conv_forward_fast",
        "conv_backward_fast",
        "max_pool_forward_fast",
        "max_pool_backward_fast",
    ]
    namespace: dict = {}
    exec("from fastconv.compat.cs231n import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(cs231n.__all__)
    assert "layer_utils.py" in cs231n.__doc__ and "from fastconv.compat.cs231n import *" in cs231n.__doc__


def test_import_loads_no_accelerator_module():
    code = "import sys, fastconv.compat.cs231n; print(sorted({'numba', 'cupy'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_backend_from_the_environment_and_backward_on_the_forwards_backend(monkeypatch, rng):
    x, w, b = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    monkeypatch.setenv("FASTCONV_BACKEND", "numpy")
    out, cache = cs231n.conv_forward_fast(x, w, b, _CP)
    pooled, pool_cache = cs231n.max_pool_forward_fast(x, _PP)
    assert cache.backend == "numpy" and pool_cache.backend == "numpy"
    monkeypatch.delenv("FASTCONV_BACKEND")
    with fastconv.use_backend("numba" if fastconv.list_backends()["numba"]["available"] else "numpy"):
        dx, dw, db = cs231n.conv_backward_fast(np.ones_like(out), cache)
        dxp = cs231n.max_pool_backward_fast(np.ones_like(pooled), pool_cache)
    ref = conv_backward_naive(np.ones_like(out), conv_forward_naive(x, w, b, _CP)[1])
    for got, want in zip((dx, dw, db), ref):
        assert_close(got, want, "float64")
    assert dxp.sum() == pooled.size


def test_arrays_of_the_backend_stay_there(on, rng):
    # NumPy arrays in, NumPy arrays out on every backend (tested above); the backend's own arrays
    # (CuPy on the cupy backend) in, the same kind out
    x, w, b = on(rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2))
    with fastconv.use_backend(on.name):
        out, cache = cs231n.conv_forward_fast(x, w, b, _CP)
        pooled, pool_cache = cs231n.max_pool_forward_fast(out, _PP)
    dp = cs231n.max_pool_backward_fast(on(np.ones(pooled.shape)), pool_cache)
    grads = cs231n.conv_backward_fast(dp, cache)
    assert all(type(a) is type(x) for a in (out, pooled, dp, *grads))
    want, ref_cache = conv_forward_naive(on.host(x), on.host(w), on.host(b), _CP)
    assert_close(on.host(out), want, "float64")


def test_empty_batch(backend):
    x = np.zeros((0, 3, 6, 6))
    with fastconv.use_backend(backend):
        out, cache = cs231n.conv_forward_fast(x, _W, _B, _CP)
        pooled, pool_cache = cs231n.max_pool_forward_fast(x, _PP)
    assert out.shape == (0, 4, 6, 6) and pooled.shape == (0, 3, 3, 3)
    dx, dw, db = cs231n.conv_backward_fast(out, cache)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    assert cs231n.max_pool_backward_fast(pooled, pool_cache).shape == x.shape


# ---------------------------------------------------------------------------------------------
# a ThreeLayerConvNet built from these layers equals one built from the naive references
# ---------------------------------------------------------------------------------------------


def three_layer_loss(params, X, y, conv_f, conv_b, pool_f, pool_b):
    """ThreeLayerConvNet.loss (reg 0): conv - relu - 2x2 max pool - affine - relu - affine - softmax."""
    n = X.shape[0]
    a, conv_cache = conv_f(X, params["W1"], params["b1"], {"stride": 1, "pad": 3})
    r = np.maximum(0, a)
    p, pool_cache = pool_f(r, {"pool_height": 2, "pool_width": 2, "stride": 2})
    h = p.reshape(n, -1) @ params["W2"] + params["b2"]
    hr = np.maximum(0, h)
    scores = hr @ params["W3"] + params["b3"]
    z = scores - scores.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(n), y].mean()
    ds = np.exp(logp)
    ds[np.arange(n), y] -= 1
    ds /= n
    grads = {"W3": hr.T @ ds, "b3": ds.sum(0)}
    dh = (ds @ params["W3"].T) * (h > 0)
    grads["W2"], grads["b2"] = p.reshape(n, -1).T @ dh, dh.sum(0)
    dr = pool_b((dh @ params["W2"].T).reshape(p.shape), pool_cache)
    _, grads["W1"], grads["b1"] = conv_b(dr * (a > 0), conv_cache)
    return loss, grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_three_layer_convnet_matches_the_naive_net(backend, rng, dtype):
    n, c, hw, f, hidden = 3, 3, 32, 32, 100  # ThreeLayerConvNet's defaults, a small batch
    params = {
        "W1": 1e-1 * rng.standard_normal((f, c, 7, 7)),
        "b1": 1e-1 * rng.standard_normal(f),
        "W2": 1e-2 * rng.standard_normal((f * (hw // 2) ** 2, hidden)),
        "b2": 1e-1 * rng.standard_normal(hidden),
        "W3": 1e-1 * rng.standard_normal((hidden, 10)),
        "b3": np.zeros(10),
    }
    X = rng.standard_normal((n, c, hw, hw))
    y = rng.integers(0, 10, n)
    naive = three_layer_loss(
        params, X, y, conv_forward_naive, conv_backward_naive, max_pool_forward_naive, max_pool_backward_naive
    )
    cast = {k: v.astype(dtype) for k, v in params.items()}
    with fastconv.use_backend(backend):
        ours = three_layer_loss(
            cast,
            X.astype(dtype),
            y,
            cs231n.conv_forward_fast,
            cs231n.conv_backward_fast,
            cs231n.max_pool_forward_fast,
            cs231n.max_pool_backward_fast,
        )
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert abs(ours[0] - naive[0]) <= tol * abs(naive[0])
    for k, want in naive[1].items():
        got = ours[1][k]
        assert got.dtype == dtype, k
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max() * 10, err_msg=k)


# ---------------------------------------------------------------------------------------------
# the benchmark's baseline is the assignment's algorithm, and the script runs
# ---------------------------------------------------------------------------------------------


def test_benchmark_baseline_matches_the_references(rng):
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    for conv_param in ({"stride": 1, "pad": 1}, {"stride": 2, "pad": 1}, {"stride": 1, "pad": 0}):
        out, cache = bench.strided_conv_forward(x, w, b, conv_param)
        want, ref_cache = conv_forward_naive(x, w, b, conv_param)
        assert_close(out, want, "float64", "baseline out")
        dout = rng.standard_normal(out.shape)
        for got, ref in zip(bench.strided_conv_backward(dout, cache), conv_backward_naive(dout, ref_cache)):
            assert_close(got, ref, "float64", "baseline grads")
    xp = rng.standard_normal((2, 3, 9, 9))
    for pool_param, method in (
        ({"pool_height": 3, "pool_width": 3, "stride": 2}, "im2col"),
        ({"pool_height": 3, "pool_width": 3, "stride": 3}, "reshape"),
        ({"pool_height": 3, "pool_width": 2, "stride": 1}, "im2col"),
    ):
        out, cache = bench.baseline_pool_forward(xp, pool_param)
        assert cache[0] == method
        want, ref_cache = max_pool_forward_naive(xp, pool_param)
        np.testing.assert_array_equal(out, want)
        dout = rng.standard_normal(out.shape)
        assert_close(
            bench.baseline_pool_backward(dout, cache), max_pool_backward_naive(dout, ref_cache), "float64"
        )


def test_benchmark_script_quick(tmp_path):
    out = tmp_path / "r.json"
    backend = "numba" if fastconv.list_backends()["numba"]["available"] else "numpy"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--backend", backend, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| case | baseline ms | adapter ms | speedup |" in done.stdout
    assert "load average before:" in done.stdout
    result = json.loads(out.read_text())
    assert result["meta"]["backend"] == backend and result["meta"]["quick"] is True
    assert len(result["rows"]) == 7
    assert all(r["baseline_ms"] > 0 and r["adapter_ms"] > 0 for r in result["rows"])
