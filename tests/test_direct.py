"""The direct forward, the col2im-free dx (numba and NumPy modules) and the numba max-pool backward
against the float64 references, on hypothesis-drawn shapes, strides, paddings, dilations, dtypes.

Pads are the contract's (top, bottom, left, right), drawn independently. The NumPy module's kernels
take ``groups, layout`` after dilation (here 1, "NCHW"); numba's direct.forward/backward_dx are its
groups == 1, NCHW kernels (no such arguments).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastconv.backends.numpy import direct as np_direct
from fastconv.testing import reference as ref

nb_direct = pytest.importorskip("fastconv.backends.numba.direct")
nb_pooling = pytest.importorskip("fastconv.backends.numba.pooling")

MODULES = {"numba": nb_direct, "numpy": np_direct}
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    # monkeypatch only sets a module constant, the same for every example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def conv_cases(draw, max_c=5):
    """(x shape, W shape, stride, pad (top, bottom, left, right), dilation, dtype, seed) with at least
    one output position."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    ek = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    h = draw(st.integers(max(1, ek[0] - pad[0] - pad[1]), ek[0] + 9))
    w = draw(st.integers(max(1, ek[1] - pad[2] - pad[3]), ek[1] + 9))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, max_c)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (f, c, kh, kw), stride, pad, dilation, dtype, draw(st.integers(0, 2**32 - 1))


def direct_forward(module, x, W, b, stride, pad, dilation):
    """The module's direct forward, groups 1, NCHW."""
    if module is np_direct:
        return np_direct.forward(x, W, b, stride, pad, dilation, 1, "NCHW")
    return module.forward(x, W, b, stride, pad, dilation)


def direct_dx(module, dout, W, x_shape, stride, pad, dilation):
    """The module's col2im-free dx, groups 1, NCHW."""
    if module is np_direct:
        return np_direct.backward_dx(dout, W, x_shape, stride, pad, dilation, 1, "NCHW")
    return module.backward_dx(dout, W, x_shape, stride, pad, dilation)


def assert_close(got, want, dtype, scale):
    """|got - want| <= rtol * scale, where scale bounds the size of the sums (sum of |terms|)."""
    assert got.dtype == dtype and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= RTOL[dtype] * np.maximum(scale, 1.0)), float((err / np.maximum(scale, 1.0)).max())


@pytest.mark.parametrize("module", list(MODULES))
@SETTINGS
@given(case=conv_cases())
def test_direct_forward_matches_the_float64_reference(module, case):
    xs, ws, stride, pad, dilation, dtype, seed = case
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if seed % 2 else None
    copies = [a.copy() for a in (x, W)]
    y = direct_forward(MODULES[module], x, W, b, stride, pad, dilation)
    want = ref.conv2d(x, W, b, stride, pad, dilation)
    scale = ref.conv2d(np.abs(x), np.abs(W), None if b is None else np.abs(b), stride, pad, dilation)
    assert_close(y, want, dtype, scale)
    assert all(np.array_equal(a, c) for a, c in zip((x, W), copies))  # inputs untouched


@pytest.mark.parametrize("path", ["numba-direct", "numba-gemm", "numpy"])
@SETTINGS
@given(case=conv_cases())
def test_backward_dx_matches_the_float64_reference(path, case, monkeypatch):
    xs, ws, stride, pad, dilation, dtype, seed = case
    module = np_direct if path == "numpy" else nb_direct
    if path.startswith("numba"):  # the direct kernel or im2col + GEMM for every phase
        monkeypatch.setattr(nb_direct, "DIRECT_DX_MAX_C", 10**6 if path == "numba-direct" else 0)
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    oh = ref.out_size(xs[2], ws[2], stride[0], pad[0], dilation[0], pad[1])
    ow = ref.out_size(xs[3], ws[3], stride[1], pad[2], dilation[1], pad[3])
    dout = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    copies = [a.copy() for a in (dout, W)]
    dx = direct_dx(module, dout, W, xs, stride, pad, dilation)
    want = ref.conv2d_backward(dout, x, W, stride, pad, dilation)[0]
    scale = ref.conv2d_backward(np.abs(dout), x, np.abs(W), stride, pad, dilation)[0]
    assert_close(dx, want, dtype, scale)
    assert all(np.array_equal(a, c) for a, c in zip((dout, W), copies))


def test_direct_kernels_are_deterministic_for_any_thread_count(monkeypatch):
    from fastconv.backends.numba import runtime

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 17, 13)).astype(np.float32)
    W = rng.standard_normal((6, 2, 3, 5)).astype(np.float32)
    dout = rng.standard_normal((5, 6, 15, 7)).astype(np.float32)  # (17 + 2 - 5) + 1, (13 + 4 - 5) // 2 + 1
    args = ((1, 2), (1, 1, 2, 2), (2, 1))  # stride, pad (top, bottom, left, right), dilation
    results = []
    for threads in (1, 2, 3, 2):
        monkeypatch.setattr(runtime, "num_threads", lambda t=threads: t)
        results.append((nb_direct.forward(x, W, None, *args), nb_direct.backward_dx(dout, W, x.shape, *args)))
    for y, dx in results[1:]:
        assert np.array_equal(y, results[0][0]) and np.array_equal(dx, results[0][1])


def _every_window_holds_input(size, k, s, p, d, n_out):
    """True when each of the n_out windows along an axis has a tap inside [0, size) (the kernels'
    precondition: the functional layer refuses a dilated window that reads only padding)."""
    return all(any(0 <= o * s - p + i * d < size for i in range(k)) for o in range(n_out))


@st.composite
def pool_cases(draw):
    """(x shape, kernel, stride, pad (top, bottom, left, right), dilation, out_hw, seed), floor or ceil
    mode, every window holding at least one element of x."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))  # stride < kernel: overlapping windows
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ek = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    pad = tuple(draw(st.integers(0, (ek[axis] - 1) // 2)) for axis in (0, 0, 1, 1))
    h = draw(st.integers(max(1, ek[0] - pad[0] - pad[1]), ek[0] + 9))
    w = draw(st.integers(max(1, ek[1] - pad[2] - pad[3]), ek[1] + 9))
    ceil_mode = draw(st.booleans())
    out_hw = (
        ref.pool_out_size(h, kh, stride[0], pad[0], dilation[0], ceil_mode, pad[1]),
        ref.pool_out_size(w, kw, stride[1], pad[2], dilation[1], ceil_mode, pad[3]),
    )
    assume(_every_window_holds_input(h, kh, stride[0], pad[0], dilation[0], out_hw[0]))
    assume(_every_window_holds_input(w, kw, stride[1], pad[2], dilation[1], out_hw[1]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return shape, (kh, kw), stride, pad, dilation, out_hw, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(case=pool_cases())
def test_maxpool_backward_matches_the_reference_with_overlapping_windows(case):
    shape, (kh, kw), stride, pad, dilation, out_hw, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if seed % 3 == 0:  # ties: the first maximum wins
        x = np.round(x).astype(np.float32)
    y, am = nb_pooling.maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, "NCHW")
    want_y, want_am = ref.max_pool2d(x, (kh, kw), stride, pad, dilation, out_hw)
    assert np.array_equal(am, want_am) and np.array_equal(y, want_y)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    args = (shape, kh, kw, stride, pad, dilation, "NCHW")
    dx = nb_pooling.maxpool2d_backward(dout, am, *args)
    want = ref.max_pool2d_backward(dout, am, shape, (kh, kw), stride, pad, dilation)
    np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(dx, nb_pooling.maxpool2d_backward(dout, am, *args))
