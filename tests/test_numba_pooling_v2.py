"""The numba backend's pooling kernels (contract v2), called directly: pad (top, bottom, left, right),
out_hw given, both layouts, both dtypes.

References: torch.nn.functional.max_pool2d / avg_pool2d in float64 (symmetric pads, ceil mode,
dilation, count_include_pad) with gradients by autograd, and small NumPy loops written from the
spec's rules for what torch cannot express (asymmetric pads, first-maximum ties, NaN).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

import fastconv  # noqa: E402
from fastconv.backends.numba import pooling  # noqa: E402

EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
DTYPES = ("float32", "float64")
LAYOUTS = ("NCHW", "NHWC")
TOL = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-13}}


# ------------------------------------------------------------------------------------------------
# helpers: layouts, sizes, the spec's rules as NumPy loops
# ------------------------------------------------------------------------------------------------


def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW array in ``layout`` (a fresh C-contiguous copy for NHWC)."""
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def pool_out(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output size along one axis; in ceil mode the last window must start inside
    the input or its top/left padding."""
    o = (size + p0 + p1 - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= size + p0:
        o -= 1
    return o


def windows_hold_input(size: int, k: int, s: int, p0: int, d: int, n_out: int) -> bool:
    """Every window along the axis holds at least one input element (the caller's guarantee)."""
    return all(any(0 <= o * s - p0 + i * d < size for i in range(k)) for o in range(n_out))


def ref_maxpool(x, kh, kw, stride, pad, dilation, out_hw):
    """The spec's max pool on NCHW x: first maximum in row-major window order (numpy.argmax: the
    first NaN wins), positions outside x skipped."""
    n, c, h_n, w_n = x.shape
    (sh, sw), (top, _, left, _), (dh, dw) = stride, pad, dilation
    y = np.empty((n, c, *out_hw), x.dtype)
    am = np.empty((n, c, *out_hw), np.int32)
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            vals = np.full((n, c, kh * kw), -np.inf, x.dtype)  # inputs hold no -inf: padding never wins
            for i in range(kh):
                for j in range(kw):
                    h, w = oh * sh - top + i * dh, ow * sw - left + j * dw
                    if 0 <= h < h_n and 0 <= w < w_n:
                        vals[:, :, i * kw + j] = x[:, :, h, w]
            k = np.argmax(vals, axis=2)
            am[:, :, oh, ow] = k
            y[:, :, oh, ow] = np.take_along_axis(vals, k[..., None], axis=2)[..., 0]
    return y, am


def ref_maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad, dilation):
    dx = np.zeros(x_shape, dout.dtype)
    (sh, sw), (top, _, left, _), (dh, dw) = stride, pad, dilation
    n_n, c_n, oh_n, ow_n = dout.shape
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    i, j = divmod(int(argmax[n, c, oh, ow]), kw)
                    dx[n, c, oh * sh - top + i * dh, ow * sw - left + j * dw] += dout[n, c, oh, ow]
    return dx


def avg_window(o, s, k, p0, p1, size):
    """PyTorch's window of output o along one axis: clipped [start, end) and the padded size."""
    start = o * s - p0
    end = min(start + k, size + p1)
    full = end - start
    start, end = max(start, 0), min(end, size)
    return start, end, full


def ref_avgpool(x, kh, kw, stride, pad, out_hw, include_pad):
    n, c, h_n, w_n = x.shape
    top, bottom, left, right = pad
    y = np.empty((n, c, *out_hw), np.float64)
    for oh in range(out_hw[0]):
        hs, he, fh = avg_window(oh, stride[0], kh, top, bottom, h_n)
        for ow in range(out_hw[1]):
            ws, we, fw = avg_window(ow, stride[1], kw, left, right, w_n)
            div = fh * fw if include_pad else (he - hs) * (we - ws)
            y[:, :, oh, ow] = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3)) / div
    return y


def ref_avgpool_backward(dout, x_shape, kh, kw, stride, pad, include_pad):
    dx = np.zeros(x_shape, np.float64)
    top, bottom, left, right = pad
    h_n, w_n = x_shape[2:]
    for oh in range(dout.shape[2]):
        hs, he, fh = avg_window(oh, stride[0], kh, top, bottom, h_n)
        for ow in range(dout.shape[3]):
            ws, we, fw = avg_window(ow, stride[1], kw, left, right, w_n)
            div = fh * fw if include_pad else (he - hs) * (we - ws)
            dx[:, :, hs:he, ws:we] += dout[:, :, oh, ow, None, None] / div
    return dx


@st.composite
def pool_cases(draw, dilation=True, asymmetric=False, max_k=4):
    """A pooling problem: shape, window, stride, pads (at most half the kernel, as torch requires),
    dilation, ceil mode; windows all hold an input element."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    if asymmetric:
        pad = tuple(draw(st.integers(0, k // 2)) for k in (kh, kh, kw, kw))
    else:
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        pad = (ph, ph, pw, pw)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pad[0] - pad[1]), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pad[2] - pad[3]), 9))
    ceil = draw(st.booleans())
    out_hw = (
        pool_out(h, kh, sh, pad[0], pad[1], dh, ceil),
        pool_out(w, kw, sw, pad[2], pad[3], dw, ceil),
    )
    assume(windows_hold_input(h, kh, sh, pad[0], dh, out_hw[0]))
    assume(windows_hold_input(w, kw, sw, pad[2], dw, out_hw[1]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), h, w)
    return {
        "shape": shape, "k": (kh, kw), "stride": (sh, sw), "pad": pad, "dilation": (dh, dw),
        "ceil": ceil, "out_hw": out_hw, "layout": draw(st.sampled_from(LAYOUTS)),
        "dtype": draw(st.sampled_from(DTYPES)), "seed": draw(st.integers(0, 2**32 - 1)),
    }  # fmt: skip


def max_call(case, x):
    kh, kw = case["k"]
    return pooling.maxpool2d_forward(
        to_layout(x, case["layout"]), kh, kw, case["stride"], case["pad"], case["dilation"], case["out_hw"],
        case["layout"],
    )  # fmt: skip


def max_back_call(case, dout, am, x_shape):
    kh, kw = case["k"]
    lay = case["layout"]
    x_shape_l = x_shape if lay == "NCHW" else (x_shape[0], x_shape[2], x_shape[3], x_shape[1])
    return pooling.maxpool2d_backward(
        to_layout(dout, lay), am, x_shape_l, kh, kw, case["stride"], case["pad"], case["dilation"], lay
    )


def avg_call(case, x, include_pad):
    kh, kw = case["k"]
    return pooling.avgpool2d_forward(
        to_layout(x, case["layout"]), kh, kw, case["stride"], case["pad"], case["out_hw"], include_pad,
        case["layout"],
    )  # fmt: skip


def avg_back_call(case, dout, x_shape, include_pad):
    kh, kw = case["k"]
    lay = case["layout"]
    x_shape_l = x_shape if lay == "NCHW" else (x_shape[0], x_shape[2], x_shape[3], x_shape[1])
    return pooling.avgpool2d_backward(
        to_layout(dout, lay), x_shape_l, kh, kw, case["stride"], case["pad"], include_pad, lay
    )


def torch_pads(case):
    top, bottom, left, right = case["pad"]
    assert top == bottom and left == right
    return (top, left)


# ------------------------------------------------------------------------------------------------
# max pooling
# ------------------------------------------------------------------------------------------------


@EXAMPLES
@given(pool_cases())
def test_max_pool_matches_torch_values_indices_and_gradient(case):
    rng = np.random.default_rng(case["seed"])
    dt, lay = case["dtype"], case["layout"]
    x = rng.standard_normal(case["shape"]).astype(dt)  # ties have probability ~0
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(
        xt, case["k"], case["stride"], torch_pads(case), case["dilation"], case["ceil"], return_indices=True
    )
    assert tuple(yt.shape[2:]) == case["out_hw"]
    y, am = max_call(case, x)
    assert am.dtype == np.int32 and y.dtype == x.dtype
    y, am = to_nchw(y, lay), to_nchw(am, lay)
    np.testing.assert_array_equal(y, yt.detach().numpy().astype(dt))
    # our argmax as a flat input position, as torch reports it; x there is y
    kh, kw = case["k"]
    (sh, sw), (top, _, left, _), (dh, dw) = case["stride"], case["pad"], case["dilation"]
    oh = np.arange(case["out_hw"][0])[:, None]
    ow = np.arange(case["out_hw"][1])[None, :]
    assert am.min() >= 0 and am.max() < kh * kw
    h = oh * sh - top + (am // kw) * dh
    w = ow * sw - left + (am % kw) * dw
    H, W = case["shape"][2:]
    assert ((h >= 0) & (h < H) & (w >= 0) & (w < W)).all()
    np.testing.assert_array_equal(h * W + w, it.numpy())
    n_i, c_i = np.indices(am.shape)[:2]
    np.testing.assert_array_equal(x[n_i, c_i, h, w], y)
    # gradient by autograd
    dout = rng.standard_normal(y.shape).astype(dt)
    yt.backward(torch.tensor(dout.astype(np.float64)))
    dx = to_nchw(max_back_call(case, dout, to_layout(am, lay), x.shape), lay)
    assert dx.dtype == x.dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL[dt])


@EXAMPLES
@given(pool_cases(asymmetric=True))
def test_max_pool_takes_first_maximum_with_ties_nan_and_asymmetric_pads(case):
    """Inputs from a few integers (ties everywhere), sometimes with NaNs, against the spec's loop."""
    rng = np.random.default_rng(case["seed"])
    dt, lay = case["dtype"], case["layout"]
    x = rng.integers(-2, 2, case["shape"]).astype(dt)
    if rng.random() < 0.5:
        x[rng.random(case["shape"]) < 0.15] = np.nan
    kh, kw = case["k"]
    y_ref, am_ref = ref_maxpool(x, kh, kw, case["stride"], case["pad"], case["dilation"], case["out_hw"])
    y, am = max_call(case, x)
    np.testing.assert_array_equal(to_nchw(y, lay), y_ref)
    np.testing.assert_array_equal(to_nchw(am, lay), am_ref)
    dout = rng.standard_normal(y_ref.shape).astype(dt)
    dx = to_nchw(max_back_call(case, dout, am, x.shape), lay)
    dx_ref = ref_maxpool_backward(
        dout, am_ref, x.shape, kh, kw, case["stride"], case["pad"], case["dilation"]
    )
    np.testing.assert_array_equal(dx, dx_ref)  # one window per position here is exact; sums in window order


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "k, s, pad, shape",
    [
        (2, 2, (0, 0, 0, 0), (3, 5, 8, 10)),  # 2x2/2 tiling: the bit-mask backward
        (2, 2, (0, 1, 0, 1), (2, 3, 7, 9)),  # ceil mode
        (3, 2, (1, 1, 1, 1), (2, 4, 11, 12)),  # written-out 3x3 windows, overlapping backward
        (3, 1, (1, 0, 0, 1), (2, 3, 6, 7)),
    ],
)
def test_max_pool_layouts_agree_bit_for_bit(dtype, k, s, pad, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 0, :2] = x[0, 0, 1, 1]  # a tie
    case = {"k": (k, k), "stride": (s, s), "pad": pad, "dilation": (1, 1)}
    case["out_hw"] = tuple(pool_out(n, k, s, pad[a], pad[a + 1], 1, True) for n, a in zip(shape[2:], (0, 2)))
    out = {}
    for lay in LAYOUTS:
        c = {**case, "layout": lay}
        y, am = max_call(c, x)
        dout = rng.standard_normal(y.shape) if lay == "NCHW" else to_layout(out["NCHW"][3], lay)
        dout = dout.astype(dtype)
        dx = max_back_call(c, to_nchw(dout, lay), am, x.shape)
        out[lay] = [to_nchw(a, lay) for a in (y, am, dx)] + [to_nchw(dout, lay)]
    for a, b in zip(out["NCHW"], out["NHWC"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_padding_never_wins_even_over_minus_infinity(layout, rng):
    """A window of -inf elements and padding takes its first element inside x, as torch does."""
    x = np.full((1, 2, 5, 4), -np.inf)
    x[0, 1] = rng.standard_normal((5, 4))
    case = {"k": (3, 3), "stride": (2, 2), "pad": (1, 1, 1, 1), "dilation": (1, 1), "layout": layout}
    case["out_hw"] = (3, 2)
    y, am = max_call(case, x)
    y, am = to_nchw(y, layout), to_nchw(am, layout)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    h = np.arange(3)[:, None] * 2 - 1 + am // 3
    w = np.arange(2)[None, :] * 2 - 1 + am % 3
    np.testing.assert_array_equal(h * 4 + w, it.numpy())
    dx = to_nchw(max_back_call(case, np.ones(y.shape), to_layout(am, layout), x.shape), layout)
    assert dx.sum() == y.size  # no gradient lost to the padding


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k, s, pad", [(2, 2, (0, 0, 0, 0)), (3, 2, (1, 1, 1, 1))])
def test_max_pool_backward_refuses_argmax_outside_the_window(layout, k, s, pad, rng):
    x = rng.standard_normal((2, 3, 8, 8))
    case = {"k": (k, k), "stride": (s, s), "pad": pad, "dilation": (1, 1), "layout": layout}
    case["out_hw"] = (pool_out(8, k, s, pad[0], pad[1], 1, False),) * 2
    y, am = max_call(case, x)
    for value in (-1, k * k, 2**30):
        bad = am.copy()
        bad.reshape(-1)[5] = value
        with pytest.raises(ValueError, match="argmax holds 1 value outside"):
            max_back_call(case, to_nchw(y, layout), bad, x.shape)


# ------------------------------------------------------------------------------------------------
# average pooling
# ------------------------------------------------------------------------------------------------


@EXAMPLES
@given(pool_cases(dilation=False), st.booleans())
def test_avg_pool_matches_torch_and_its_gradient(case, include_pad):
    rng = np.random.default_rng(case["seed"])
    dt, lay = case["dtype"], case["layout"]
    x = rng.standard_normal(case["shape"]).astype(dt)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(
        xt, case["k"], case["stride"], torch_pads(case), case["ceil"], include_pad
    )
    assert tuple(yt.shape[2:]) == case["out_hw"]
    y = avg_call(case, x, include_pad)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(to_nchw(y, lay), yt.detach().numpy(), **TOL[dt])
    dout = rng.standard_normal(y.shape).astype(dt)
    yt.backward(torch.tensor(to_nchw(dout, lay).astype(np.float64)))
    dx = avg_back_call(case, to_nchw(dout, lay), x.shape, include_pad)
    assert dx.dtype == x.dtype
    np.testing.assert_allclose(to_nchw(dx, lay), xt.grad.numpy(), **TOL[dt])


@EXAMPLES
@given(pool_cases(dilation=False, asymmetric=True), st.booleans())
def test_avg_pool_follows_the_divisor_rule_with_asymmetric_pads(case, include_pad):
    rng = np.random.default_rng(case["seed"])
    dt, lay = case["dtype"], case["layout"]
    kh, kw = case["k"]
    x = rng.standard_normal(case["shape"]).astype(dt)
    y = avg_call(case, x, include_pad)
    y_ref = ref_avgpool(x, kh, kw, case["stride"], case["pad"], case["out_hw"], include_pad)
    np.testing.assert_allclose(to_nchw(y, lay), y_ref, **TOL[dt])
    dout = rng.standard_normal(y_ref.shape).astype(dt)
    dx = avg_back_call(case, dout, x.shape, include_pad)
    dx_ref = ref_avgpool_backward(dout, x.shape, kh, kw, case["stride"], case["pad"], include_pad)
    np.testing.assert_allclose(to_nchw(dx, lay), dx_ref, **TOL[dt])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 7), (3, 4, 1, 6), (1, 3, 4, 9)])
def test_global_avg_pool_is_the_plane_mean(dtype, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    h, w = shape[2:]
    case = {"k": (h, w), "stride": (h, w), "pad": (0, 0, 0, 0), "out_hw": (1, 1)}
    dout = rng.standard_normal(shape[:2] + (1, 1)).astype(dtype)
    for lay in LAYOUTS:
        c = {**case, "layout": lay}
        y = to_nchw(avg_call(c, x, True), lay)
        np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), **TOL[dtype])
        dx = to_nchw(avg_back_call(c, dout, x.shape, True), lay)
        np.testing.assert_allclose(
            dx, np.broadcast_to(dout.astype(np.float64) / (h * w), shape), **TOL[dtype]
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize(
    "k, s, pad, shape",
    [
        (2, 2, (0, 0, 0, 0), (2, 5, 8, 10)),
        (3, 2, (1, 1, 1, 0), (2, 3, 11, 12)),
        (3, 1, (0, 1, 1, 1), (1, 4, 5, 6)),
    ],
)
def test_avg_pool_layouts_agree_bit_for_bit(dtype, include_pad, k, s, pad, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    case = {"k": (k, k), "stride": (s, s), "pad": pad}
    case["out_hw"] = tuple(pool_out(n, k, s, pad[a], pad[a + 1], 1, True) for n, a in zip(shape[2:], (0, 2)))
    dout = rng.standard_normal(shape[:2] + case["out_hw"]).astype(dtype)
    got = {}
    for lay in LAYOUTS:
        c = {**case, "layout": lay}
        got[lay] = (
            to_nchw(avg_call(c, x, include_pad), lay),
            to_nchw(avg_back_call(c, dout, x.shape, include_pad), lay),
        )
    for a, b in zip(got["NCHW"], got["NHWC"]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# every kernel: thread counts, inputs
# ------------------------------------------------------------------------------------------------


def run_all(x, layout):
    """Every pooling kernel on x (NCHW values) in ``layout``, ceil mode, overlapping windows."""
    case = {"k": (3, 3), "stride": (2, 2), "pad": (1, 1, 1, 0), "dilation": (1, 1), "layout": layout}
    case["out_hw"] = tuple(
        pool_out(n, 3, 2, p0, p1, 1, True) for n, p0, p1 in zip(x.shape[2:], (1, 1), (1, 0))
    )
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(x.shape[:2] + case["out_hw"]).astype(x.dtype)
    y, am = max_call(case, x)
    dx = max_back_call(case, dout, am, x.shape)
    ya = avg_call(case, x, False)
    dxa = avg_back_call(case, dout, x.shape, True)
    h, w = x.shape[2:]
    whole = {"k": (h, w), "stride": (h, w), "pad": (0, 0, 0, 0), "out_hw": (1, 1), "layout": layout}
    yg = avg_call(whole, x, True)
    dxg = avg_back_call(whole, dout[:, :, :1, :1], x.shape, True)
    return [y, am, dx, ya, dxa, yg, dxg]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pooling_is_bit_identical_for_one_two_and_three_threads(dtype, layout, rng):
    x = rng.standard_normal((3, 5, 13, 11)).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        with fastconv.configure(threads=threads):
            results.append(run_all(x, layout))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pooling_leaves_its_inputs_unchanged_and_returns_fresh_arrays(layout, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    case = {"k": (2, 2), "stride": (2, 2), "pad": (0, 0, 0, 0), "dilation": (1, 1), "layout": layout}
    case["out_hw"] = (4, 4)
    xl = to_layout(x, layout)
    dout = to_layout(rng.standard_normal((2, 3, 4, 4)), layout)
    x0, d0 = xl.copy(), dout.copy()
    y, am = pooling.maxpool2d_forward(xl, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), (4, 4), layout)
    am0 = am.copy()
    dx = pooling.maxpool2d_backward(dout, am, xl.shape, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), layout)
    ya = pooling.avgpool2d_forward(xl, 2, 2, (2, 2), (0, 0, 0, 0), (4, 4), True, layout)
    dxa = pooling.avgpool2d_backward(dout, xl.shape, 2, 2, (2, 2), (0, 0, 0, 0), True, layout)
    np.testing.assert_array_equal(xl, x0)
    np.testing.assert_array_equal(dout, d0)
    np.testing.assert_array_equal(am, am0)
    for out in (y, am, dx, ya, dxa):
        for inp in (xl, dout, am):
            assert out is am or not np.shares_memory(out, inp)
