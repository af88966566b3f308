"""The CUDA kernels, compiled for the CPU with g++ and cpu_compat.h, agree with the NumPy backend.

These check the real index math of the real ``.cu`` sources on machines without a GPU: the same
files NVRTC compiles for the cupy backend, launched as one block of one thread and called through
ctypes on NumPy buffers with the cupy backend's own launch arguments (fastconv.backends.cuda).
Outputs are pre-filled with NaN, so an element a kernel fails to write shows up.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from cuda_tools import check as _cuda_check
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv._shapes import conv_output_size, effective_kernel
from fastconv.backends import numpy as ref

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = ("float32", "float64")
INDEX = ("int32", "int64")


@pytest.fixture(scope="module")
def kernels() -> _cuda_check.CPUKernels:
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the CPU build of the CUDA kernels, but the compiler {cxx!r} is missing")
        pytest.skip(f"C++ compiler {cxx!r} not found")
    return _cuda_check.cpu_kernels()


@st.composite
def geometries(draw, max_channels: int = 3):
    """(x_shape, kh, kw, stride, pad, dilation) with the dilated window fitting the padded input."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    eh, ew = effective_kernel(kh, dilation[0]), effective_kernel(kw, dilation[1])
    h = draw(st.integers(max(1, eh - 2 * pad[0]), eh + 7))
    w = draw(st.integers(max(1, ew - 2 * pad[1]), ew + 7))
    x_shape = (draw(st.integers(1, 3)), draw(st.integers(1, max_channels)), h, w)
    return x_shape, kh, kw, stride, pad, dilation


def _col_shape(x_shape, kh, kw, stride, pad, dilation):
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    return n * oh * ow, c * kh * kw


def _close(dtype: str) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


@SETTINGS
@given(
    g=geometries(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    seed=st.integers(0, 2**32 - 1),
)
def test_im2col_kernel_matches_numpy_backend_in_both_layouts(kernels, g, dtype, index, seed):
    x = np.random.default_rng(seed).standard_normal(g[0]).astype(dtype)
    expected = ref.im2col(x, *g[1:])
    col = kernels.im2col(x, *g[1:], index=index)
    np.testing.assert_array_equal(col, expected)  # a copy: bit for bit
    col_t = kernels.im2col(x, *g[1:], k_major=True, index=index)
    np.testing.assert_array_equal(col_t, expected.T)


@SETTINGS
@given(
    g=geometries(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    seed=st.integers(0, 2**32 - 1),
)
def test_col2im_kernel_matches_numpy_backend_in_both_layouts(kernels, g, dtype, index, seed):
    col = np.random.default_rng(seed).standard_normal(_col_shape(*g)).astype(dtype)
    expected = ref.col2im(col, *g)
    dx = kernels.col2im(col, *g, index=index)
    np.testing.assert_allclose(dx, expected, **_close(dtype))
    dx_t = kernels.col2im(np.ascontiguousarray(col.T), *g, k_major=True, index=index)
    np.testing.assert_array_equal(dx_t, dx)  # same gather order in both layouts


@SETTINGS
@given(g=geometries(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_col2im_kernel_is_the_adjoint_of_im2col_kernel(kernels, g, dtype, seed):
    # <im2col(x), c> == <x, col2im(c)> for every x and c
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g[0])
    c = rng.standard_normal(_col_shape(*g))
    lhs = np.vdot(kernels.im2col(x, *g[1:]), c)
    rhs = np.vdot(x, kernels.col2im(c, *g))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def _pool_input(rng, shape, dtype, kind):
    if kind == "ties":  # few distinct values: many windows with several maxima
        return rng.integers(-2, 3, size=shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "nan_inf":
        mask = rng.random(shape)
        x[mask < 0.1] = np.nan
        x[(mask >= 0.1) & (mask < 0.2)] = -np.inf
        x[(mask >= 0.2) & (mask < 0.25)] = np.inf
    return x


@SETTINGS
@given(
    g=geometries(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    kind=st.sampled_from(["random", "ties", "nan_inf"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_maxpool_forward_kernel_matches_numpy_backend_with_ties_nan_and_padding(
    kernels, g, dtype, index, kind, seed
):
    x = _pool_input(np.random.default_rng(seed), g[0], dtype, kind)
    y_ref, arg_ref = ref.maxpool2d_forward(x, *g[1:])
    y, arg = kernels.maxpool_fwd(x, *g[1:], index=index)
    np.testing.assert_array_equal(y, y_ref)  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(arg, arg_ref)
    assert arg.dtype == np.int32


@SETTINGS
@given(
    g=geometries(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    from_forward=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_maxpool_backward_kernel_matches_numpy_backend(kernels, g, dtype, index, from_forward, seed):
    rng = np.random.default_rng(seed)
    x_shape, kh, kw = g[0], g[1], g[2]
    n, c = x_shape[:2]
    oh, ow = conv_output_size(x_shape[2:], (kh, kw), g[3], g[4], g[5])
    if from_forward:
        _, argmax = kernels.maxpool_fwd(_pool_input(rng, x_shape, dtype, "ties"), *g[1:])
    else:  # any argmax, including ones that name padding (their gradient is dropped)
        argmax = rng.integers(0, kh * kw, size=(n, c, oh, ow)).astype(np.int32)
    dout = rng.standard_normal((n, c, oh, ow)).astype(dtype)
    expected = ref.maxpool2d_backward(dout, argmax, *g)
    dx = kernels.maxpool_bwd(dout, argmax, *g, index=index)
    np.testing.assert_allclose(dx, expected, **_close(dtype))


def test_pooling_kernel_sends_gradient_to_first_maximum(kernels):
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    y, argmax = kernels.maxpool_fwd(x, 2, 2, (1, 1), (0, 0), (1, 1))
    assert y.item() == 3.0 and argmax.item() == 1
    dx = kernels.maxpool_bwd(np.array([[[[5.0]]]]), argmax, x.shape, 2, 2, (1, 1), (0, 0), (1, 1))
    np.testing.assert_array_equal(dx, [[[[0.0, 5.0], [0.0, 0.0]]]])


def test_pooling_kernel_treats_nan_as_the_maximum_and_padding_as_minus_infinity(kernels):
    x = np.array([[[[-5.0, np.nan], [np.inf, np.nan]]]], dtype=np.float32)
    y, argmax = kernels.maxpool_fwd(x, 2, 2, (1, 1), (0, 0), (1, 1))
    assert np.isnan(y.item()) and argmax.item() == 1
    # a 3x3 window at the corner of a padded input sees -inf padding and the value -7
    y, argmax = kernels.maxpool_fwd(np.full((1, 1, 1, 1), -7.0), 3, 3, (1, 1), (1, 1), (1, 1))
    assert y.item() == -7.0 and argmax.item() == 4


def test_pooling_kernel_gives_minus_infinity_for_a_window_wholly_in_padding(kernels):
    x = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    y, argmax = kernels.maxpool_fwd(x, 1, 1, (3, 3), (3, 3), (1, 1))  # windows at rows/cols -3, 0
    assert y[0, 0, 0, 0] == -np.inf and argmax[0, 0, 0, 0] == 0
    dx = kernels.maxpool_bwd(np.ones_like(y), argmax, x.shape, 1, 1, (3, 3), (3, 3), (1, 1))
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_kernels_are_bitwise_deterministic(kernels, dtype, rng):
    g = ((2, 3, 11, 9), 3, 3, (1, 2), (1, 1), (2, 1))
    col = rng.standard_normal(_col_shape(*g)).astype(dtype)
    assert kernels.col2im(col, *g).tobytes() == kernels.col2im(col, *g).tobytes()
    x = rng.standard_normal(g[0]).astype(dtype)
    _, argmax = kernels.maxpool_fwd(x, *g[1:])
    dout = rng.standard_normal(argmax.shape).astype(dtype)
    a = kernels.maxpool_bwd(dout, argmax, *g)
    assert a.tobytes() == kernels.maxpool_bwd(dout, argmax, *g).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_32_and_64_bit_index_instantiations_agree_bit_for_bit(kernels, dtype, rng):
    g = ((2, 2, 10, 12), 3, 2, (2, 1), (1, 2), (1, 2))
    x = rng.standard_normal(g[0]).astype(dtype)
    col = rng.standard_normal(_col_shape(*g)).astype(dtype)
    for k_major in (False, True):
        a, b = (kernels.im2col(x, *g[1:], k_major=k_major, index=i) for i in INDEX)
        np.testing.assert_array_equal(a, b)
    a, b = (kernels.col2im(col, *g, index=i) for i in INDEX)
    assert a.tobytes() == b.tobytes()
    (ya, aa), (yb, ab) = (kernels.maxpool_fwd(x, *g[1:], index=i) for i in INDEX)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(aa, ab)


def test_kernels_leave_their_inputs_unchanged(kernels, rng):
    g = ((2, 3, 7, 8), 3, 3, (1, 1), (1, 1), (1, 1))
    x = rng.standard_normal(g[0])
    x0 = x.copy()
    kernels.im2col(x, *g[1:])
    y, argmax = kernels.maxpool_fwd(x, *g[1:])
    np.testing.assert_array_equal(x, x0)
    col = rng.standard_normal(_col_shape(*g))
    col0, arg0, y0 = col.copy(), argmax.copy(), y.copy()
    kernels.col2im(col, *g)
    kernels.maxpool_bwd(y, argmax, *g)
    np.testing.assert_array_equal(col, col0)
    np.testing.assert_array_equal(argmax, arg0)
    np.testing.assert_array_equal(y, y0)
