"""fastconv.testing.check_backend: passes on correct backends, and fails, naming the kernel, on broken ones.

A checker that cannot fail proves nothing: each broken backend below breaks one promise of the contract
in one kernel, and its test asserts that exactly that kernel is reported, with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import fastconv
from fastconv.backends import KERNELS, REQUIRED
from fastconv.backends import numpy as numpy_backend
from fastconv.testing import CASES, TOLERANCES, BackendCheckError, BackendReport, Case, check_backend
from fastconv.testing import reference as ref


# Contract violations of built-in backends that check_backend found, as (kernel, case name), until fixed:
# test_known_failures_of_builtin_backends_still_fail turns into a failure once one is fixed (then remove it).
def loopback(**overrides: Callable[..., Any]) -> SimpleNamespace:
    """A third-party-style backend object that hands every kernel to the numpy backend.

    ``overrides`` replace kernels, to break one of them.
    """
    attrs = {attr: getattr(numpy_backend, attr) for attr in REQUIRED}
    attrs.update(name="loopback")
    attrs.update(overrides)
    return SimpleNamespace(**attrs)


@pytest.fixture
def registered_loopback():
    """The loopback backend registered as "loopback", removed after the test."""
    backend = loopback()
    fastconv.register_backend("loopback", backend)
    yield backend
    fastconv.unregister_backend("loopback")


# ---------------------------------------------------------------------------------------------------
# Correct backends pass
# ---------------------------------------------------------------------------------------------------


def test_check_backend_passes_on_every_builtin_backend(backend):
    assert isinstance(check_backend(backend), BackendReport)


def test_check_backend_passes_on_a_registered_third_party_backend_by_name(registered_loopback):
    report = check_backend("loopback")
    assert report.backend == "loopback"
    assert report.cases == len(CASES) and report.dtypes == ("float32", "float64")
    assert set(report.max_errors) == set(KERNELS)
    for kernel, errors in report.max_errors.items():
        for dtype, error in errors.items():
            assert 0.0 <= error <= TOLERANCES[dtype], (kernel, dtype, error)
    assert report.max_errors["im2col"] == {"float32": 0.0, "float64": 0.0}  # a copy: exact
    assert "'loopback'" in str(report) and "conv2d_backward" in str(report)


def test_check_backend_takes_a_backend_object_that_is_not_registered():
    assert check_backend(loopback(), dtypes=["float64"]).dtypes == ("float64",)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cases_can_parametrise_a_third_party_test_one_case_at_a_time(case):
    report = check_backend(loopback(), cases=[case])
    assert report.cases == 1 and report.checks > 0


def test_the_default_cases_cover_the_geometries_the_contract_allows():
    def any_case(pred: Callable[[Case], bool]) -> bool:
        return any(pred(c) for c in CASES)

    assert any_case(lambda c: c.x_shape[2] != c.x_shape[3] and c.kernel[0] != c.kernel[1])  # non-square
    assert any_case(
        lambda c: c.stride[0] != c.stride[1] and c.pad[0] != c.pad[1] and c.dilation[0] != c.dilation[1]
    )
    assert any_case(lambda c: c.stride[0] > c.kernel[0])  # pixels no window reads
    # a border window that reads only padding: its first row of taps lies above the input
    assert any_case(lambda c: c.dilation[0] * (c.kernel[0] - 1) < c.pad[0])
    assert any_case(lambda c: c.out_hw == (1, 1) and c.pad == (0, 0))  # window = input
    assert any_case(lambda c: c.x_shape[0] == 1)  # batch of 1
    assert any_case(lambda c: c.x_shape[1] >= 32)  # many channels
    assert any_case(lambda c: c.out_hw[0] * c.out_hw[1] >= 256)  # large images (per-image GEMMs in numba)
    assert len({c.name for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------------
# Broken backends fail, naming the kernel
# ---------------------------------------------------------------------------------------------------


def _pool_windows(x: np.ndarray, kh: int, kw: int, stride, pad, dilation, fill: float) -> np.ndarray:
    """(N, C, OH, OW, kh*kw) windows of x padded with ``fill``."""
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [
        xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=-1)


def _pool(pick: Callable[[np.ndarray], np.ndarray], fill: float = -np.inf) -> Callable[..., Any]:
    """A max-pool forward whose argmax is ``pick(windows)``."""

    def maxpool2d_forward(x, kh, kw, stride, pad, dilation):
        windows = _pool_windows(x, kh, kw, stride, pad, dilation, fill)
        argmax = pick(windows)
        y = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
        return np.ascontiguousarray(y), argmax.astype(np.int32)

    return maxpool2d_forward


def _last_maximum(windows: np.ndarray) -> np.ndarray:
    return windows.shape[-1] - 1 - windows[..., ::-1].argmax(axis=-1)


def _nan_is_not_the_maximum(windows: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(windows), -np.inf, windows).argmax(axis=-1)


def _conv_flipping_the_kernel(x, W, b, stride, pad, dilation):
    return numpy_backend.conv2d_forward(
        x, np.ascontiguousarray(W[:, :, ::-1, ::-1]), b, stride, pad, dilation
    )


def _im2col_with_column_major_taps(x, kh, kw, stride, pad, dilation):
    col = numpy_backend.im2col(x, kh, kw, stride, pad, dilation)
    return col.reshape(col.shape[0], -1, kh, kw).transpose(0, 1, 3, 2).reshape(col.shape).copy()


def _col2im_clearing_its_input(col, x_shape, kh, kw, stride, pad, dilation):
    dx = numpy_backend.col2im(col, x_shape, kh, kw, stride, pad, dilation)
    col[...] = 0.0  # "frees" the caller's buffer
    return dx


def _maxpool_backward_clipping_argmax(dout, argmax, x_shape, kh, kw, stride, pad, dilation):
    clipped = np.clip(argmax, 0, kh * kw - 1)
    return numpy_backend.maxpool2d_backward(dout, clipped, x_shape, kh, kw, stride, pad, dilation)


def _maxpool_returning_x_for_1x1_windows(x, kh, kw, stride, pad, dilation):
    if (kh, kw, stride, pad) == (1, 1, (1, 1), (0, 0)):  # "the identity": a fast path returning x itself
        return x, np.zeros(x.shape, np.int32)
    return numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation)


_buffers: dict[tuple[Any, ...], np.ndarray] = {}


def _conv_backward_reusing_db(dout, x, W, stride, pad, dilation, need_dx=True):
    dx, dW, db = numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, need_dx)
    out = _buffers.setdefault((db.shape, db.dtype.name), np.empty_like(db))
    out[...] = db
    return dx, dW, out


_calls = itertools.count()


def _conv_backward_off_by_an_ulp_every_other_call(dout, x, W, stride, pad, dilation, need_dx=True):
    dx, dW, db = numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, need_dx)
    if next(_calls) % 2:  # as if a parallel reduction summed in a different order
        dW.flat[0] = np.nextafter(dW.flat[0], np.inf)
    return dx, dW, db


def _conv_backward_ignoring_need_dx(dout, x, W, stride, pad, dilation, need_dx=True):
    return numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, True)


def _pool_with_int64_argmax(x, kh, kw, stride, pad, dilation):
    y, argmax = numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation)
    return y, argmax.astype(np.int64)


def _conv_promoting_to_float64(x, W, b, stride, pad, dilation):
    return numpy_backend.conv2d_forward(x, W, b, stride, pad, dilation).astype(np.float64)


BROKEN = [
    pytest.param("conv2d_forward", _conv_flipping_the_kernel, "y: max error", id="conv flips the kernel"),
    pytest.param(
        "im2col", _im2col_with_column_major_taps, "not an exact copy", id="im2col column-major taps"
    ),
    pytest.param(
        "maxpool2d_forward", _pool(_last_maximum), "first maximum", id="pool picks the last maximum"
    ),
    pytest.param(
        "maxpool2d_forward",
        _pool(lambda w: w.argmax(-1), fill=0.0),
        "y: not an exact copy",
        id="pool pads with 0",
    ),
    pytest.param("maxpool2d_forward", _pool(_nan_is_not_the_maximum), "first maximum", id="pool skips NaN"),
    pytest.param(
        "col2im", _col2im_clearing_its_input, "modified its input col", id="col2im modifies its input"
    ),
    pytest.param(
        "maxpool2d_backward",
        _maxpool_backward_clipping_argmax,
        "raised nothing, not ValueError",
        id="pool backward ignores out-of-range argmax",
    ),
    pytest.param(
        "maxpool2d_forward",
        _maxpool_returning_x_for_1x1_windows,
        "y is a view of its input x",
        id="pool returns a view of its input",
    ),
    pytest.param(
        "conv2d_backward", _conv_backward_reusing_db, "reused buffer", id="conv backward reuses a buffer"
    ),
    pytest.param(
        "conv2d_backward",
        _conv_backward_off_by_an_ulp_every_other_call,
        "dW differs between two calls",
        id="conv backward is nondeterministic",
    ),
    pytest.param(
        "conv2d_backward",
        _conv_backward_ignoring_need_dx,
        "dx is not None although need_dx=False",
        id="conv backward ignores need_dx",
    ),
    pytest.param(
        "maxpool2d_forward", _pool_with_int64_argmax, "argmax has dtype int64", id="pool int64 argmax"
    ),
    pytest.param(
        "conv2d_forward", _conv_promoting_to_float64, "y has dtype float64", id="conv promotes float32"
    ),
]


@pytest.mark.parametrize(("kernel", "broken", "reason"), BROKEN)
def test_check_backend_fails_on_a_broken_kernel_and_names_only_that_kernel(kernel, broken, reason):
    with pytest.raises(BackendCheckError) as info:
        check_backend(loopback(**{kernel: broken}))
    failures = info.value.failures
    assert isinstance(info.value, AssertionError)
    assert {f.kernel for f in failures} == {kernel}, "\n".join(map(str, failures))
    assert any(reason in f.what for f in failures), "\n".join(map(str, failures))
    message = str(info.value)
    assert message.startswith(f"backend 'loopback' failed {len(failures)} of ")
    assert f"in {kernel} ({len(failures)})" in message
    first = failures[0]
    # each line names the case (shapes, stride, pad, dilation) and the dtype
    assert first.case is not None and str(first.case) in first.where and str(first) in message
    assert "float32" in first.where or "float64" in first.where


def test_a_backend_missing_a_kernel_fails_before_running_anything():
    backend = loopback()
    del backend.maxpool2d_backward
    with pytest.raises(BackendCheckError, match="missing attribute maxpool2d_backward"):
        check_backend(backend)


def test_unknown_dtypes_and_kernels_are_refused():
    with pytest.raises(ValueError, match="dtypes"):
        check_backend(loopback(), dtypes=["float16"])
    with pytest.raises(ValueError, match="kernels"):
        check_backend(loopback(), kernels=["conv3d"])


def test_the_same_seed_draws_the_same_data_and_another_seed_other_data():
    def first_failure(seed: int) -> str:
        with pytest.raises(BackendCheckError) as info:
            check_backend(
                loopback(conv2d_forward=_conv_flipping_the_kernel), seed=seed, kernels=["conv2d_forward"]
            )
        return info.value.failures[0].what

    assert first_failure(0) == first_failure(0) != first_failure(1)


# ---------------------------------------------------------------------------------------------------
# The references check_backend relies on
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kh", "kw", "stride", "pad"), [(3, 3, 1, 1), (2, 3, 2, 0), (3, 2, 3, 2)])
def test_direct_loop_im2col_and_col2im_agree_with_the_book(kh, kw, stride, pad):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 7, 8))
    col = ref.im2col_direct(x, kh, kw, (stride, stride), (pad, pad))
    np.testing.assert_array_equal(col, ref.im2col(x, kh, kw, stride, pad))
    c = rng.standard_normal(col.shape)
    np.testing.assert_allclose(
        ref.col2im_direct(c, x.shape, kh, kw, (stride, stride), (pad, pad)),
        ref.col2im(c, x.shape, kh, kw, stride, pad),
        rtol=1e-13,
        atol=1e-13,
    )


def test_direct_loop_col2im_is_the_adjoint_of_im2col_with_pairs_and_dilation():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 9, 8))
    args = ((1, 2), (2, 1), (3, 2))  # stride, pad, dilation
    col = ref.im2col_direct(x, 2, 3, *args)
    c = rng.standard_normal(col.shape)
    assert np.isclose(np.vdot(col, c), np.vdot(x, ref.col2im_direct(c, x.shape, 2, 3, *args)), rtol=1e-12)
    # and conv2d is a GEMM over these columns
    W = rng.standard_normal((4, 2, 2, 3))
    y = (
        (col @ W.reshape(4, -1).T)
        .reshape(2, *ref.conv2d(x, W, None, *args).shape[2:], 4)
        .transpose(0, 3, 1, 2)
    )
    np.testing.assert_allclose(y, ref.conv2d(x, W, None, *args), rtol=1e-12, atol=1e-12)
