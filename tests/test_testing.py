"""fastconv.testing.check_backend: passes on correct backends, and fails, naming the kernel, on broken ones.

A checker that cannot fail proves nothing: each broken backend below breaks one promise of the contract
(v2) in one kernel, and its test asserts that exactly that kernel is reported, with the reason. The
last part checks the float64 references themselves against ``torch.nn.functional``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.backends import numpy as numpy_backend
from fastconv.testing import CASES, TOLERANCES, BackendCheckError, BackendReport, Case, check_backend
from fastconv.testing import reference as ref
from fastconv.testing._backend_check import KERNELS

ATTRIBUTES = ("name", "xp", "owns", "to_device", "to_host", "contract")


def loopback(**overrides: Callable[..., Any]) -> SimpleNamespace:
    """A third-party-style backend object that hands every kernel to the numpy backend.

    ``overrides`` replace kernels, to break one of them.
    """
    attrs = {attr: getattr(numpy_backend, attr) for attr in (*ATTRIBUTES, *KERNELS)}
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


def _cast(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=like.dtype)


def reference_backend() -> SimpleNamespace:
    """A contract-v2 backend made of the float64 references, rounded to the input dtype: it shares no
    code with the built-in backends, so the checker is shown to pass on any correct backend."""

    def conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx=True):
        dx, dW, db = ref.conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout)
        return (_cast(dx, x) if need_dx else None), _cast(dW, W), _cast(db, W)

    def maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout):
        y, arg = ref.max_pool2d(x, (kh, kw), stride, pad, dilation, out_hw, layout)
        return _cast(y, x), np.ascontiguousarray(arg, np.int32)

    def maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad, dilation, layout):
        if argmax.min() < 0 or argmax.max() >= kh * kw:
            raise ValueError(f"argmax outside [0, {kh * kw})")
        dx = ref.max_pool2d_backward(dout, argmax, x_shape, (kh, kw), stride, pad, dilation, layout)
        return _cast(dx, dout)

    return SimpleNamespace(
        name="reference",
        contract=2,
        xp=np,
        owns=lambda a: isinstance(a, np.ndarray),
        to_device=lambda a: np.array(a, copy=True),
        to_host=lambda a: np.array(a, copy=True),
        im2col=lambda x, kh, kw, s, p, d: _cast(ref.im2col_direct(x, kh, kw, s, p, d), x),
        col2im=lambda col, shape, kh, kw, s, p, d: _cast(ref.col2im_direct(col, shape, kh, kw, s, p, d), col),
        conv2d_forward=lambda x, W, b, s, p, d, g, lay: _cast(ref.conv2d(x, W, b, s, p, d, g, lay), x),
        conv2d_backward=conv2d_backward,
        conv2d_backward_data=lambda dout, W, shape, s, p, d, g, lay: _cast(
            ref.conv2d_backward_data(dout, W, shape, s, p, d, g, lay), dout
        ),
        maxpool2d_forward=maxpool2d_forward,
        maxpool2d_backward=maxpool2d_backward,
        avgpool2d_forward=lambda x, kh, kw, s, p, out_hw, cip, lay: _cast(
            ref.avg_pool2d(x, (kh, kw), s, p, out_hw, cip, lay), x
        ),
        avgpool2d_backward=lambda dout, shape, kh, kw, s, p, cip, lay: _cast(
            ref.avg_pool2d_backward(dout, shape, (kh, kw), s, p, cip, lay), dout
        ),
    )


# ---------------------------------------------------------------------------------------------------
# Correct backends pass
# ---------------------------------------------------------------------------------------------------


def test_check_backend_passes_on_every_builtin_backend(backend):
    assert isinstance(check_backend(backend), BackendReport)


def test_check_backend_passes_on_a_backend_made_of_the_references():
    report = check_backend(reference_backend())
    assert set(report.max_errors) == set(KERNELS)


def test_check_backend_passes_on_a_registered_third_party_backend_by_name(registered_loopback):
    report = check_backend("loopback")
    assert report.backend == "loopback"
    assert report.cases == len(CASES) and report.dtypes == ("float32", "float64")
    assert set(report.max_errors) == set(KERNELS)
    for kernel, errors in report.max_errors.items():
        for dtype, error in errors.items():
            assert 0.0 <= error <= TOLERANCES[dtype], (kernel, dtype, error)
    assert report.max_errors["im2col"] == {"float32": 0.0, "float64": 0.0}  # a copy: exact
    assert "'loopback'" in str(report) and "conv2d_backward_data" in str(report)


def test_the_checker_covers_every_kernel_of_the_contract():
    from fastconv.backends import KERNELS as V1_KERNELS
    from fastconv.backends import NEW_KERNELS

    assert set(KERNELS) == {*V1_KERNELS, *NEW_KERNELS}


@pytest.mark.parametrize(
    ("version", "says"), [(None, "has no contract attribute"), (1, "declares contract = 1")]
)
def test_a_backend_not_declaring_contract_2_is_told_to(version, says):
    backend = loopback()
    if version is None:
        del backend.contract
    else:
        backend.contract = version
    with pytest.raises(BackendCheckError) as info:
        check_backend(backend)
    assert f"backend 'loopback' {says}: set contract = 2" in str(info.value)


def test_check_backend_takes_a_backend_object_that_is_not_registered():
    report = check_backend(loopback(), dtypes=["float64"], layouts="NHWC")
    assert report.dtypes == ("float64",)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cases_can_parametrise_a_third_party_test_one_case_at_a_time(case):
    report = check_backend(loopback(), cases=[case])
    assert report.cases == 1 and report.checks > 0


def test_the_default_cases_cover_the_geometries_the_contract_allows():
    def any_case(pred: Callable[[Case], bool]) -> bool:
        return any(pred(c) for c in CASES)

    assert any_case(lambda c: c.x_shape[2] != c.x_shape[3] and c.kernel[0] != c.kernel[1])  # non-square
    assert any_case(
        lambda c: c.stride[0] != c.stride[1] and c.pad[0] != c.pad[2] and c.dilation[0] != c.dilation[1]
    )
    assert any_case(lambda c: c.pad[0] != c.pad[1] and c.pad[2] != c.pad[3])  # asymmetric on both axes
    assert any_case(lambda c: c.pad[0] != c.pad[1] and c.stride != (1, 1) and c.dilation != (1, 1))
    assert any_case(lambda c: c.stride[0] > c.kernel[0])  # pixels no window reads
    # a border window that reads only padding: its first row of taps lies above the input
    assert any_case(lambda c: c.dilation[0] * (c.kernel[0] - 1) < c.pad[0])
    assert any_case(lambda c: c.out_hw == (1, 1) and c.pad == (0, 0, 0, 0))  # window = input
    assert any_case(lambda c: c.x_shape[0] == 1)  # batch of 1
    assert any_case(lambda c: c.x_shape[1] >= 32)  # many channels
    assert any_case(lambda c: c.out_hw[0] * c.out_hw[1] >= 256)  # large images (per-image GEMMs in numba)
    # groups: 2, depthwise, depthwise multiplier, many-channel depthwise
    assert any_case(lambda c: 1 < c.groups < c.x_shape[1])
    assert any_case(lambda c: c.groups == c.x_shape[1] == c.filters)
    assert any_case(lambda c: c.groups == c.x_shape[1] and c.filters == 2 * c.groups and c.stride != (1, 1))
    assert any_case(lambda c: c.groups == c.x_shape[1] >= 32)
    # ceil mode: a window more than floor mode, one past the input, and a dropped one (would start
    # in the end padding)
    assert any_case(lambda c: c.ceil_mode and c.pool_out_hw("max") != c.out_hw)
    assert any_case(lambda c: c.ceil_mode and c.groups > 1 and c.dilation != (1, 1))
    assert any_case(
        lambda c: (
            c.ceil_mode
            and ref.pool_out_size(
                c.x_shape[3], c.kernel[1], c.stride[1], c.pad[2], 1, False, c.pad[3] + c.stride[1]
            )
            > c.pool_out_hw("avg")[1]
        )
    )
    assert all(c.pool_fits("max") and c.pool_fits("avg") for c in CASES if c.ceil_mode or c.groups > 1)
    assert len({c.name for c in CASES}) == len(CASES)


def test_a_case_with_groups_that_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="groups 2 must divide C=3"):
        Case("bad", (1, 3, 4, 4), 4, (3, 3), groups=2)


def test_a_case_stores_its_pad_as_top_bottom_left_right():
    assert Case("c", (1, 1, 4, 4), 1, (3, 3), pad=(1, 2)).pad == (1, 1, 2, 2)
    assert Case("c", (1, 1, 4, 4), 1, (3, 3), pad=(1, 0, 2, 1)).pad == (1, 0, 2, 1)
    assert "pad (1, 0, 2, 1)" in str(Case("c", (1, 2, 4, 4), 2, (3, 3), pad=(1, 0, 2, 1), groups=2))


# ---------------------------------------------------------------------------------------------------
# Broken backends fail, naming the kernel
# ---------------------------------------------------------------------------------------------------


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def _pool_windows(x, kh, kw, stride, pad, dilation, out_hw, fill: float) -> np.ndarray:
    """(N, C, OH, OW, kh*kw) windows of the NCHW x padded with ``fill`` (enough for ``out_hw``)."""
    (sh, sw), (top, _, left, _), (dh, dw), (oh, ow) = stride, pad, dilation, out_hw
    n, c, h, w = x.shape
    rows = max(top + h, (oh - 1) * sh + dh * (kh - 1) + 1)
    cols = max(left + w, (ow - 1) * sw + dw * (kw - 1) + 1)
    xp = np.full((n, c, rows, cols), fill, dtype=x.dtype)
    xp[:, :, top : top + h, left : left + w] = x
    taps = [
        xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=-1)


def _pool(pick: Callable[[np.ndarray], np.ndarray], fill: float = -np.inf) -> Callable[..., Any]:
    """A max-pool forward whose argmax is ``pick(windows)``."""

    def maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout):
        windows = _pool_windows(_nchw(x, layout), kh, kw, stride, pad, dilation, out_hw, fill)
        argmax = pick(windows)
        y = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
        return _to_layout(y, layout), _to_layout(argmax.astype(np.int32), layout)

    return maxpool2d_forward


def _last_maximum(windows: np.ndarray) -> np.ndarray:
    return windows.shape[-1] - 1 - windows[..., ::-1].argmax(axis=-1)


def _nan_is_not_the_maximum(windows: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(windows), -np.inf, windows).argmax(axis=-1)


def _conv_flipping_the_kernel(x, W, b, stride, pad, dilation, groups, layout):
    W = np.ascontiguousarray(W[:, :, ::-1, ::-1])
    return numpy_backend.conv2d_forward(x, W, b, stride, pad, dilation, groups, layout)


def _conv_with_symmetric_pad(x, W, b, stride, pad, dilation, groups, layout):
    top, _, left, _ = pad  # as if pad were still (h, w)
    return numpy_backend.conv2d_forward(x, W, b, stride, (top, top, left, left), dilation, groups, layout)


def _conv_reading_group_0_for_every_group(x, W, b, stride, pad, dilation, groups, layout):
    xc = _nchw(x, layout)
    cg = xc.shape[1] // groups
    wrong = np.concatenate([xc[:, :cg]] * groups, axis=1)  # every group sees group 0's channels
    return numpy_backend.conv2d_forward(
        _to_layout(wrong, layout), W, b, stride, pad, dilation, groups, layout
    )


def _im2col_with_column_major_taps(x, kh, kw, stride, pad, dilation):
    col = numpy_backend.im2col(x, kh, kw, stride, pad, dilation)
    return col.reshape(col.shape[0], -1, kh, kw).transpose(0, 1, 3, 2).reshape(col.shape).copy()


def _col2im_clearing_its_input(col, x_shape, kh, kw, stride, pad, dilation):
    dx = numpy_backend.col2im(col, x_shape, kh, kw, stride, pad, dilation)
    col[...] = 0.0  # "frees" the caller's buffer
    return dx


def _maxpool_backward_clipping_argmax(dout, argmax, x_shape, kh, kw, stride, pad, dilation, layout):
    clipped = np.clip(argmax, 0, kh * kw - 1)
    return numpy_backend.maxpool2d_backward(dout, clipped, x_shape, kh, kw, stride, pad, dilation, layout)


def _maxpool_returning_x_for_1x1_windows(x, kh, kw, stride, pad, dilation, out_hw, layout):
    if (kh, kw, stride, pad) == (1, 1, (1, 1), (0, 0, 0, 0)):  # "the identity": a fast path returning x
        return x, np.zeros(x.shape, np.int32)
    return numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout)


def _maxpool_in_floor_mode(x, kh, kw, stride, pad, dilation, out_hw, layout):
    h, w = _nchw(x, layout).shape[2:]
    floor = (
        ref.out_size(h, kh, stride[0], pad[0], dilation[0], pad[1]),
        ref.out_size(w, kw, stride[1], pad[2], dilation[1], pad[3]),
    )
    return numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation, floor, layout)


def _maxpool_nhwc_with_column_major_argmax(x, kh, kw, stride, pad, dilation, out_hw, layout):
    y, argmax = numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout)
    if layout == "NHWC":  # a channels-last kernel that numbers its taps j*kh + i
        i, j = np.divmod(argmax, kw)
        argmax = (j * kh + i).astype(np.int32)
    return y, argmax


_buffers: dict[tuple[Any, ...], np.ndarray] = {}


def _conv_backward_reusing_db(dout, x, W, stride, pad, dilation, groups, layout, need_dx=True):
    dx, dW, db = numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx)
    out = _buffers.setdefault((db.shape, db.dtype.name), np.empty_like(db))
    out[...] = db
    return dx, dW, out


_calls = itertools.count()


def _conv_backward_off_by_an_ulp_every_other_call(
    dout, x, W, stride, pad, dilation, groups, layout, need_dx=True
):
    dx, dW, db = numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx)
    if next(_calls) % 2:  # as if a parallel reduction summed in a different order
        dW.flat[0] = np.nextafter(dW.flat[0], np.inf)
    return dx, dW, db


def _conv_backward_ignoring_need_dx(dout, x, W, stride, pad, dilation, groups, layout, need_dx=True):
    return numpy_backend.conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, True)


def _backward_data_always_nchw(dout, W, x_shape, stride, pad, dilation, groups, layout):
    dx = numpy_backend.conv2d_backward_data(dout, W, x_shape, stride, pad, dilation, groups, layout)
    return np.ascontiguousarray(_nchw(dx, layout))  # forgets to give NHWC back


def _pool_with_int64_argmax(x, kh, kw, stride, pad, dilation, out_hw, layout):
    y, argmax = numpy_backend.maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout)
    return y, argmax.astype(np.int64)


def _conv_promoting_to_float64(x, W, b, stride, pad, dilation, groups, layout):
    return numpy_backend.conv2d_forward(x, W, b, stride, pad, dilation, groups, layout).astype(np.float64)


def _avg_always_counting_pad(x, kh, kw, stride, pad, out_hw, count_include_pad, layout):
    return numpy_backend.avgpool2d_forward(x, kh, kw, stride, pad, out_hw, True, layout)


def _avg_dividing_by_the_whole_window(x, kh, kw, stride, pad, out_hw, count_include_pad, layout):
    if not count_include_pad:
        return numpy_backend.avgpool2d_forward(x, kh, kw, stride, pad, out_hw, False, layout)
    # kh*kw even where a ceil-mode window hangs past the end padding
    windows = _pool_windows(_nchw(x, layout), kh, kw, stride, pad, (1, 1), out_hw, 0.0)
    return _to_layout((windows.sum(axis=-1) / (kh * kw)).astype(x.dtype), layout)


def _avg_backward_always_counting_pad(dout, x_shape, kh, kw, stride, pad, count_include_pad, layout):
    return numpy_backend.avgpool2d_backward(dout, x_shape, kh, kw, stride, pad, True, layout)


BROKEN = [
    pytest.param("conv2d_forward", _conv_flipping_the_kernel, "y: max error", id="conv flips the kernel"),
    pytest.param("conv2d_forward", _conv_with_symmetric_pad, "y has shape", id="conv takes pad as symmetric"),
    pytest.param(
        "conv2d_forward",
        _conv_reading_group_0_for_every_group,
        "y: max error",
        id="conv reads the wrong group's channels",
    ),
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
        "maxpool2d_forward", _maxpool_in_floor_mode, "y has shape", id="pool ignores out_hw (ceil mode)"
    ),
    pytest.param(
        "maxpool2d_forward",
        _maxpool_nhwc_with_column_major_argmax,
        "first maximum",
        id="pool numbers NHWC taps column-major",
    ),
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
        "conv2d_backward_data",
        _backward_data_always_nchw,
        "dx has shape",
        id="backward data ignores the layout",
    ),
    pytest.param(
        "maxpool2d_forward", _pool_with_int64_argmax, "argmax has dtype int64", id="pool int64 argmax"
    ),
    pytest.param(
        "conv2d_forward", _conv_promoting_to_float64, "y has dtype float64", id="conv promotes float32"
    ),
    pytest.param(
        "avgpool2d_forward",
        _avg_always_counting_pad,
        "y: max error",
        id="avg pool ignores count_include_pad",
    ),
    pytest.param(
        "avgpool2d_forward",
        _avg_dividing_by_the_whole_window,
        "y: max error",
        id="avg pool counts the ceil-mode overhang",
    ),
    pytest.param(
        "avgpool2d_backward",
        _avg_backward_always_counting_pad,
        "dx: max error",
        id="avg pool backward ignores count_include_pad",
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
    # each line names the case (shapes, stride, pad, dilation), the dtype and the layout
    assert first.case is not None and str(first.case) in first.where and str(first) in message
    assert "float32" in first.where or "float64" in first.where
    if kernel not in ("im2col", "col2im"):
        assert "NCHW" in first.where or "NHWC" in first.where


def test_a_layout_specific_failure_names_the_layout():
    with pytest.raises(BackendCheckError) as info:
        check_backend(loopback(maxpool2d_forward=_maxpool_nhwc_with_column_major_argmax))
    assert all(", NHWC," in f.where for f in info.value.failures)
    # and checking NCHW alone passes
    check_backend(loopback(maxpool2d_forward=_maxpool_nhwc_with_column_major_argmax), layouts=["NCHW"])


def test_a_backend_missing_a_kernel_fails_before_running_anything():
    backend = loopback()
    del backend.maxpool2d_backward
    with pytest.raises(BackendCheckError, match="missing attribute maxpool2d_backward"):
        check_backend(backend)


@pytest.mark.parametrize("kernel", ["conv2d_backward_data", "avgpool2d_forward", "avgpool2d_backward"])
def test_a_backend_lacking_a_kernel_new_in_v2_is_told_so(kernel):
    backend = loopback()
    delattr(backend, kernel)
    with pytest.raises(BackendCheckError) as info:
        check_backend(backend)
    assert f"backend 'loopback' lacks {kernel} (contract v2)" in str(info.value)
    assert [f.what for f in info.value.failures] == [f"backend 'loopback' lacks {kernel} (contract v2)"]
    # a selection without that kernel still checks the others
    others = [k for k in KERNELS if k != kernel]
    assert check_backend(backend, kernels=others, cases=CASES[:2]).checks > 0


def test_unknown_dtypes_kernels_and_layouts_are_refused():
    with pytest.raises(ValueError, match="dtypes"):
        check_backend(loopback(), dtypes=["float16"])
    with pytest.raises(ValueError, match="kernels"):
        check_backend(loopback(), kernels=["conv3d"])
    with pytest.raises(ValueError, match="layouts"):
        check_backend(loopback(), layouts=["NCWH"])


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
    for pad in ((2, 1), (2, 0, 1, 3)):
        args = ((1, 2), pad, (3, 2))  # stride, pad, dilation
        col = ref.im2col_direct(x, 2, 3, *args)
        c = rng.standard_normal(col.shape)
        assert np.isclose(np.vdot(col, c), np.vdot(x, ref.col2im_direct(c, x.shape, 2, 3, *args)), rtol=1e-12)
        # and conv2d is a GEMM over these columns
        W = rng.standard_normal((4, 2, 2, 3))
        want = ref.conv2d(x, W, None, *args)
        y = (col @ W.reshape(4, -1).T).reshape(2, *want.shape[2:], 4).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_pad_forms_of_the_references():
    assert ref.pad4((1, 2)) == (1, 1, 2, 2)
    assert ref.pad4((1, 2, 3, 4)) == (1, 2, 3, 4)
    assert ref.pad4(((1, 2), (3, 4))) == (1, 2, 3, 4)


torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _t(a: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a, np.float64)).requires_grad_(True)


def _close(got: np.ndarray, want: Any) -> None:
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@st.composite
def conv_geometry(draw, transpose: bool = False):
    groups = draw(st.sampled_from([1, 2, 3]))
    cg, fg = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if transpose:  # symmetric pads (PyTorch's), output_padding < max(stride, dilation)
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        pad = (ph, ph, pw, pw)
        op = (draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1)))
        h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        out_h = ref.conv_transpose2d_output_size(h, kh, sh, ph, ph, op[0], dh)
        out_w = ref.conv_transpose2d_output_size(w, kw, sw, pw, pw, op[1], dw)
        if min(out_h, out_w) < 1:
            pad = (0, 0, 0, 0)
    else:
        pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
        op = (0, 0)
        h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pad[0] - pad[1]), 7))
        w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pad[2] - pad[3]), 7))
    n = draw(st.integers(1, 2))
    return dict(
        n=n, groups=groups, cg=cg, fg=fg, k=(kh, kw), s=(sh, sw), d=(dh, dw), pad=pad, op=op, hw=(h, w)
    )


@_SETTINGS
@given(g=conv_geometry(), layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**16))
def test_reference_conv2d_and_its_gradients_equal_torch(g, layout, seed):
    rng = np.random.default_rng(seed)
    c, f = g["groups"] * g["cg"], g["groups"] * g["fg"]
    x = rng.standard_normal((g["n"], c, *g["hw"]))
    W = rng.standard_normal((f, g["cg"], *g["k"]))
    b = rng.standard_normal(f)
    top, bottom, left, right = g["pad"]
    xt, Wt, bt = _t(x), _t(W), _t(b)
    yt = F.conv2d(F.pad(xt, (left, right, top, bottom)), Wt, bt, g["s"], 0, g["d"], g["groups"])
    args = (g["s"], g["pad"], g["d"], g["groups"], layout)
    xl = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    y = ref.conv2d(xl, W, b, *args)
    _close(ref.to_nchw(y, layout), yt)
    dout = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dout))
    dl = ref.from_nchw(dout, layout)
    dx, dW, db = ref.conv2d_backward(dl, xl, W, *args)
    _close(ref.to_nchw(dx, layout), xt.grad)
    _close(dW, Wt.grad)
    _close(db, bt.grad)
    _close(ref.conv2d_backward_data(dl, W, xl.shape, *args), dx)


@_SETTINGS
@given(g=conv_geometry(transpose=True), layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**16))
def test_reference_conv_transpose2d_and_its_gradients_equal_torch(g, layout, seed):
    rng = np.random.default_rng(seed)
    cin, cout = g["groups"] * g["cg"], g["groups"] * g["fg"]
    x = rng.standard_normal((g["n"], cin, *g["hw"]))
    W = rng.standard_normal((cin, g["fg"], *g["k"]))
    b = rng.standard_normal(cout)
    xt, Wt, bt = _t(x), _t(W), _t(b)
    ph, pw = g["pad"][0], g["pad"][2]
    yt = F.conv_transpose2d(xt, Wt, bt, g["s"], (ph, pw), g["op"], g["groups"], g["d"])
    args = (g["s"], g["pad"], g["op"], g["d"], g["groups"], layout)
    xl = ref.from_nchw(x, layout)
    y = ref.conv_transpose2d(xl, W, b, *args)
    _close(ref.to_nchw(y, layout), yt)
    dout = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dout))
    dx, dW, db = ref.conv_transpose2d_backward(ref.from_nchw(dout, layout), xl, W, *args)
    _close(ref.to_nchw(dx, layout), xt.grad)
    _close(dW, Wt.grad)
    _close(db, bt.grad)


@_SETTINGS
@given(g=conv_geometry(), seed=st.integers(0, 2**16), op=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_reference_conv_transpose2d_with_asymmetric_pads_is_backward_data(g, seed, op):
    # The spec's identity: conv_transpose2d(x, W, pad p4, output_padding op) equals
    # conv2d_backward_data(x, W, y_shape, (top, bottom - op_h, left, right - op_w)) where those are >= 0.
    top, bottom, left, right = g["pad"]
    op = (min(op[0], bottom, max(g["s"][0], g["d"][0]) - 1), min(op[1], right, max(g["s"][1], g["d"][1]) - 1))
    rng = np.random.default_rng(seed)
    c, f = g["groups"] * g["cg"], g["groups"] * g["fg"]
    W = rng.standard_normal((f, g["cg"], *g["k"]))
    conv_out = ref.conv2d(
        np.zeros((g["n"], c, *g["hw"])), W, None, g["s"], g["pad"], g["d"], g["groups"]
    ).shape
    x = rng.standard_normal(conv_out)  # the transposed convolution's input
    (kh, kw), (sh, sw), (dh, dw) = g["k"], g["s"], g["d"]
    y_shape = (
        g["n"],
        c,
        ref.conv_transpose2d_output_size(conv_out[2], kh, sh, top, bottom, op[0], dh),
        ref.conv_transpose2d_output_size(conv_out[3], kw, sw, left, right, op[1], dw),
    )
    assume(min(y_shape[2:]) >= 1)  # padding that crops the whole output: fastconv refuses such a layer
    got = ref.conv_transpose2d(x, W, None, g["s"], g["pad"], op, g["d"], g["groups"])
    assert got.shape == y_shape
    inner = (top, bottom - op[0], left, right - op[1])
    want = ref.conv2d_backward_data(x, W, y_shape, g["s"], inner, g["d"], g["groups"])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@st.composite
def pool_geometry(draw, dilated: bool):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    g = dict(k=(kh, kw), s=(sh, sw), d=(dh, dw), p=(ph, pw), hw=(h, w), ceil=draw(st.booleans()))
    # PyTorch's pad <= k/2 still lets a dilated window miss the input; the contract excludes that
    case = Case("drawn", (1, 1, h, w), 1, (kh, kw), (sh, sw), (ph, pw), g["d"], ceil_mode=g["ceil"])
    assume(case.pool_fits("max" if dilated else "avg"))
    return g


def _pool_out(g) -> tuple[int, int]:
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["hw"], g["k"], g["s"], g["p"], g["d"]
    return (ref.pool_out_size(h, kh, sh, ph, dh, g["ceil"]), ref.pool_out_size(w, kw, sw, pw, dw, g["ceil"]))


@_SETTINGS
@given(g=pool_geometry(dilated=True), layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**16))
def test_reference_max_pool2d_equals_torch_in_floor_and_ceil_mode(g, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, *g["hw"]))  # continuous: no ties, so the maximum is unique
    xt = _t(x)
    yt, idx = F.max_pool2d(xt, g["k"], g["s"], g["p"], g["d"], ceil_mode=g["ceil"], return_indices=True)
    out_hw = _pool_out(g)
    y, arg = ref.max_pool2d(ref.from_nchw(x, layout), g["k"], g["s"], g["p"], g["d"], out_hw, layout)
    y, arg = ref.to_nchw(y, layout), ref.to_nchw(arg, layout).astype(np.int64)
    _close(y, yt)
    # torch's flat input index from the window-local argmax
    i, j = np.divmod(arg, g["k"][1])
    oh, ow = np.indices(out_hw)
    rows = oh * g["s"][0] - g["p"][0] + i * g["d"][0]
    cols = ow * g["s"][1] - g["p"][1] + j * g["d"][1]
    np.testing.assert_array_equal(rows * g["hw"][1] + cols, idx.numpy())
    dout = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dout))
    dx = ref.max_pool2d_backward(
        ref.from_nchw(dout, layout),
        ref.from_nchw(arg, layout),
        ref.from_nchw(x, layout).shape,
        g["k"],
        g["s"],
        g["p"],
        g["d"],
        layout,
    )
    _close(ref.to_nchw(dx, layout), xt.grad)


def test_reference_max_pool2d_argmax_is_the_first_maximum_and_nan_wins():
    x = np.array([[[[1.0, 3.0, 3.0], [3.0, np.nan, np.nan], [-np.inf, 2.0, 0.0]]]])
    _, arg = ref.max_pool2d(x, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(arg[0, 0], [[3, 2], [1, 0]])  # NaN at (1, 1) in both top windows
    _, arg = ref.max_pool2d(np.array([[[[2.0, 2.0], [2.0, 2.0]]]]), (2, 2), (1, 1), (0, 0))
    assert arg[0, 0, 0, 0] == 0


@_SETTINGS
@given(
    g=pool_geometry(dilated=False),
    include=st.booleans(),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    seed=st.integers(0, 2**16),
)
def test_reference_avg_pool2d_equals_torch_with_its_divisor_rule(g, include, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, *g["hw"]))
    xt = _t(x)
    yt = F.avg_pool2d(xt, g["k"], g["s"], g["p"], ceil_mode=g["ceil"], count_include_pad=include)
    out_hw = _pool_out(g)
    y = ref.avg_pool2d(ref.from_nchw(x, layout), g["k"], g["s"], g["p"], out_hw, include, layout)
    _close(ref.to_nchw(y, layout), yt)
    dout = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dout))
    dx = ref.avg_pool2d_backward(
        ref.from_nchw(dout, layout), ref.from_nchw(x, layout).shape, g["k"], g["s"], g["p"], include, layout
    )
    _close(ref.to_nchw(dx, layout), xt.grad)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reference_global_avg_pool2d_equals_torch(layout):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 4))
    xt = _t(x)
    yt = F.adaptive_avg_pool2d(xt, 1)
    y = ref.global_avg_pool2d(ref.from_nchw(x, layout), layout)
    _close(ref.to_nchw(y, layout), yt)
    dout = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dout))
    dx = ref.global_avg_pool2d_backward(ref.from_nchw(dout, layout), ref.from_nchw(x, layout).shape, layout)
    _close(ref.to_nchw(dx, layout), xt.grad)
