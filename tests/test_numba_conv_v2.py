"""The numba backend's convolutions under contract v2, called directly: groups (dense, depthwise,
depthwise multiplier, small groups), both layouts, asymmetric padding, stride, dilation, both dtypes;
forward, dx, dW, db and conv2d_backward_data against torch.nn.functional in float64.

torch.nn.functional.conv2d has no asymmetric padding: the reference pads x with F.pad first.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv  # noqa: E402
from fastconv.backends import numba as nb  # noqa: E402

# the module (the package's ``algorithms`` attribute is the tuple of names)
algorithms = importlib.import_module("fastconv.backends.numba.algorithms")

F = torch.nn.functional

MODES = ("dense", "depthwise", "multiplier", "grouped", "grouped_wide")


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _reference(x, W, b, dout, stride, pad, dilation, groups):  # type: ignore[no-untyped-def]
    """y, dx, dW, db by PyTorch in float64, NCHW; pad (top, bottom, left, right)."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    Wt = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    top, bottom, left, right = pad
    y = F.conv2d(F.pad(xt, (left, right, top, bottom)), Wt, bt, stride, 0, dilation, groups)
    y.backward(torch.tensor(dout, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()


def _close(got: np.ndarray, want: np.ndarray, dtype: str, what: str) -> None:
    assert got.shape == want.shape, what
    assert got.dtype == np.dtype(dtype), what
    scale = max(1.0, float(np.abs(want).max()))
    tol = 1e-10 if dtype == "float64" else 2e-4  # float32: a few ulps of the largest term, summed
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    mode = draw(st.sampled_from(MODES))
    g = 1 if mode == "dense" else draw(st.integers(2, 4))
    cg = {"dense": draw(st.integers(1, 4)), "depthwise": 1, "multiplier": 1, "grouped": 2}.get(mode, 0)
    if mode == "grouped_wide":
        g, cg = 2, draw(st.integers(17, 20))  # past GROUP_DIRECT_MAX_TAPS with 3x3: auto picks gemm
    fg = {"multiplier": draw(st.integers(2, 3)), "depthwise": 1}.get(mode, draw(st.integers(1, 3)))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + pad[0] + pad[1] >= dilation[0] * (kh - 1) + 1)
    assume(w + pad[2] + pad[3] >= dilation[1] * (kw - 1) + 1)
    n = draw(st.integers(1, 3))
    return {
        "x_shape": (n, g * cg, h, w),
        "W_shape": (g * fg, cg, kh, kw),
        "stride": stride,
        "pad": pad,
        "dilation": dilation,
        "groups": g,
        "layout": draw(st.sampled_from(("NCHW", "NHWC"))),
        "dtype": draw(st.sampled_from(("float32", "float64"))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _algorithms(case: dict) -> list[str]:
    """Every algorithm that can run the case (auto's choice first)."""
    args = (case["x_shape"], case["W_shape"], case["stride"], case["pad"], case["dilation"])
    extra = (case["groups"], case["layout"])
    auto = algorithms.choose_algorithm("forward", *args, case["dtype"], *extra)
    names = [auto] + [a for a in nb.algorithms if a != auto]
    return [a for a in names if algorithms.algorithm_support(a, "forward", *args, *extra) is None]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_conv_matches_torch_float64(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = rng.standard_normal(case["x_shape"]).astype(dt)
    W = rng.standard_normal(case["W_shape"]).astype(dt)
    b = rng.standard_normal(case["W_shape"][0]).astype(dt)
    s, p, d, g, layout = case["stride"], case["pad"], case["dilation"], case["groups"], case["layout"]
    oh, ow = fastconv._shapes.conv_output_size(case["x_shape"][2:], case["W_shape"][2:], s, p, d)
    dout = rng.standard_normal((x.shape[0], W.shape[0], oh, ow)).astype(dt)
    y_ref, dx_ref, dW_ref, db_ref = _reference(x, W, b, dout, s, p, d, g)
    to = _nhwc if layout == "NHWC" else (lambda a: a)
    xl, dl = to(x), to(dout)
    frozen = [a.copy() for a in (xl, W, b, dl)]
    for alg in _algorithms(case):
        what = f"{alg} {case}"
        y = nb.conv2d_forward(xl, W, b, s, p, d, g, layout, algorithm=alg)
        _close(y, to(y_ref), dt, "y " + what)
        y0 = nb.conv2d_forward(xl, W, None, s, p, d, g, layout, algorithm=alg)
        _close(y0, to(y_ref - b.reshape(1, -1, 1, 1)), dt, "y without bias " + what)
        dx, dW, db = nb.conv2d_backward(dl, xl, W, s, p, d, g, layout, True, algorithm=alg)
        _close(dx, to(dx_ref), dt, "dx " + what)
        _close(dW, dW_ref, dt, "dW " + what)
        _close(db, db_ref, dt, "db " + what)
        none, dW2, db2 = nb.conv2d_backward(dl, xl, W, s, p, d, g, layout, False, algorithm=alg)
        assert none is None
        np.testing.assert_array_equal(dW2, dW)
        np.testing.assert_array_equal(db2, db)
    dxd = nb.conv2d_backward_data(dl, W, xl.shape, s, p, d, g, layout)
    _close(dxd, to(dx_ref), dt, f"backward_data {case}")
    for a, before in zip((xl, W, b, dl), frozen):
        np.testing.assert_array_equal(a, before)  # inputs unchanged


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_same_bits_for_1_2_3_threads(layout: str, mult: int, stride: int) -> None:
    rng = np.random.default_rng(7)
    c = 20  # not a multiple of the NHWC dW kernel's 8-channel blocks
    x = rng.standard_normal((3, 9, 11, c)).astype(np.float32)  # NHWC
    x = x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    W = rng.standard_normal((c * mult, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32)
    args = ((stride, stride), (1, 0, 2, 1), (1, 1), c, layout)
    results = []
    for threads in (1, 2, 3):
        with fastconv.configure(threads=threads):
            y = nb.conv2d_forward(x, W, b, *args, algorithm="direct")
            dout = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
            grads = nb.conv2d_backward(dout, x, W, *args, True, algorithm="direct")
            dxd = nb.conv2d_backward_data(dout, W, x.shape, *args)
            results.append((y, *grads, dxd))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


def test_depthwise_dw_keeps_inf_where_torch_does() -> None:
    """An inf in x that only the spill-over columns of the flat NCHW dW sums touch must not turn
    other taps' sums into NaN."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 7))
    x[0, 1, 2, 6] = np.inf  # the last column: a true read for the taps j = 2, a spill-over read for j = 0
    W = rng.standard_normal((3, 1, 3, 3))
    b = np.zeros(3)
    pad = (0, 0, 0, 0)
    dout = rng.standard_normal((2, 3, 4, 5))
    _, _, dW_ref, _ = _reference(x, W, b, dout, (1, 1), pad, (1, 1), 3)
    _, dW, _ = nb.conv2d_backward(dout, x, W, (1, 1), pad, (1, 1), 3, "NCHW", True, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(dW), np.isnan(dW_ref))
    np.testing.assert_array_equal(dW[np.isinf(dW_ref)], dW_ref[np.isinf(dW_ref)])
    np.testing.assert_allclose(dW[np.isfinite(dW_ref)], dW_ref[np.isfinite(dW_ref)], rtol=1e-10)


def test_algorithm_support_refuses_winograd_where_it_cannot_run() -> None:
    args = ((2, 8, 9, 9), (8, 8, 3, 3), (1, 1))
    assert algorithms.algorithm_support("winograd", "forward", *args, (1, 1, 1, 1), (1, 1), 1, "NCHW") is None
    assert "symmetric" in algorithms.algorithm_support(
        "winograd", "forward", *args, (1, 0, 1, 1), (1, 1), 1, "NCHW"
    )
    # NHWC runs Winograd through NCHW copies, and "auto" takes it where NCHW would
    assert algorithms.algorithm_support("winograd", "forward", *args, (1, 1, 1, 1), (1, 1), 1, "NHWC") is None
    s4_nhwc = ((64, 32, 32, 64), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "float32", 1)
    for direction in ("forward", "backward"):
        assert algorithms.choose_algorithm(direction, *s4_nhwc, "NHWC") == "winograd"
    wd = ((2, 8, 9, 9), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert "groups" in algorithms.algorithm_support("winograd", "forward", *wd, 8, "NCHW")
    assert algorithms.choose_algorithm("forward", *wd, "float32", 8, "NCHW") == "direct"
    assert algorithms.choose_algorithm("backward", *wd, "float32", 8, "NHWC") == "direct"


def test_warmup_units_compile_and_run() -> None:
    for unit in ("depthwise", "nhwc"):
        assert unit in nb.UNITS
    nb._compile(["depthwise", "nhwc"], ("float64",))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("k, op", [(3, 1), (4, 0)])
def test_backward_data_is_conv_transpose2d(layout: str, k: int, op: int) -> None:
    """conv_transpose2d(x, W, stride 2, padding 1, output_padding op) = conv2d_backward_data(x as dout,
    W, y_shape, pad (1, 1 - op, 1, 1 - op)); 16 channels take the NCHW path through NHWC copies."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 5, 4))
    W = rng.standard_normal((6, 16, k, k))  # (C_in, C_out, kh, kw) = the conv's (F, C, kh, kw)
    want = F.conv_transpose2d(torch.tensor(x), torch.tensor(W), None, 2, 1, op).numpy()
    to = _nhwc if layout == "NHWC" else (lambda a: a)
    y_shape = to(np.empty(want.shape)).shape
    got = nb.conv2d_backward_data(to(x), W, y_shape, (2, 2), (1, 1 - op, 1, 1 - op), (1, 1), 1, layout)
    np.testing.assert_allclose(got, to(want), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# NCHW depthwise, multiplier 1, stride 1: the flat-plane kernels (kernels.dw_flat_forward / _backward)
# ----------------------------------------------------------------------------------------------


@st.composite
def flat_cases(draw):  # type: ignore[no-untyped-def]
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, 4)) for _ in range(4))  # pads past dil*(k-1): dx crops dout
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    assume(h + pad[0] + pad[1] >= dilation[0] * (kh - 1) + 1)
    assume(w + pad[2] + pad[3] >= dilation[1] * (kw - 1) + 1)
    c = draw(st.integers(2, 5))
    return {
        "x_shape": (draw(st.integers(1, 3)), c, h, w),
        "W_shape": (c, 1, kh, kw),
        "pad": pad,
        "dilation": dilation,
        "dtype": draw(st.sampled_from(("float32", "float64"))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=flat_cases())
def test_depthwise_flat_plane_matches_torch_float64(case: dict) -> None:
    direct = importlib.import_module("fastconv.backends.numba.direct")
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = rng.standard_normal(case["x_shape"]).astype(dt)
    W = rng.standard_normal(case["W_shape"]).astype(dt)
    b = rng.standard_normal(W.shape[0]).astype(dt)
    c, p, d, s = x.shape[1], case["pad"], case["dilation"], (1, 1)
    assert direct._flat(W, c, s)
    oh, ow = fastconv._shapes.conv_output_size(x.shape[2:], W.shape[2:], s, p, d)
    dout = rng.standard_normal((x.shape[0], c, oh, ow)).astype(dt)
    y_ref, dx_ref, dW_ref, db_ref = _reference(x, W, b, dout, s, p, d, c)
    frozen = [a.copy() for a in (x, W, b, dout)]
    what = str(case)
    _close(nb.conv2d_forward(x, W, b, s, p, d, c, "NCHW", algorithm="direct"), y_ref, dt, "y " + what)
    y0 = nb.conv2d_forward(x, W, None, s, p, d, c, "NCHW", algorithm="direct")
    _close(y0, y_ref - b.reshape(1, -1, 1, 1), dt, "y without bias " + what)
    dx, dW, db = nb.conv2d_backward(dout, x, W, s, p, d, c, "NCHW", True, algorithm="direct")
    _close(dx, dx_ref, dt, "dx " + what)
    _close(dW, dW_ref, dt, "dW " + what)
    _close(db, db_ref, dt, "db " + what)
    none, dW2, db2 = nb.conv2d_backward(dout, x, W, s, p, d, c, "NCHW", False, algorithm="direct")
    assert none is None
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)
    dxd = nb.conv2d_backward_data(dout, W, x.shape, s, p, d, c, "NCHW")
    np.testing.assert_array_equal(dxd, dx)  # the same flipped-kernel correlation
    for a, before in zip((x, W, b, dout), frozen):
        np.testing.assert_array_equal(a, before)  # inputs unchanged


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k, pad, dil", [((3, 3), (1, 1, 1, 1), (1, 1)), ((2, 5), (0, 3, 4, 1), (2, 1))])
def test_depthwise_flat_plane_same_bits_for_1_2_3_threads(
    dtype: str, k: tuple, pad: tuple, dil: tuple
) -> None:
    rng = np.random.default_rng(5)
    c = 13
    x = rng.standard_normal((4, c, 12, 10)).astype(dtype)
    W = rng.standard_normal((c, 1, *k)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    args = ((1, 1), pad, dil, c, "NCHW")
    results = []
    for threads in (1, 2, 3):
        with fastconv.configure(threads=threads):
            y = nb.conv2d_forward(x, W, b, *args, algorithm="direct")
            dout = np.random.default_rng(6).standard_normal(y.shape).astype(dtype)
            grads = nb.conv2d_backward(dout, x, W, *args, True, algorithm="direct")
            dxd = nb.conv2d_backward_data(dout, W, x.shape, *args)
            results.append((y, *grads, dxd))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


def test_depthwise_flat_plane_dw_keeps_inf_in_dout_where_torch_does() -> None:
    """An inf in dout meets the padding zeros of the flat dW sums (inf * 0 = NaN): the exact sums decide."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 7))
    W = rng.standard_normal((3, 1, 3, 3))
    pad = (1, 0, 2, 1)
    oh, ow = fastconv._shapes.conv_output_size((6, 7), (3, 3), (1, 1), pad, (1, 1))
    dout = rng.standard_normal((2, 3, oh, ow))
    dout[1, 2, 0, ow - 1] = np.inf
    _, dx_ref, dW_ref, db_ref = _reference(x, W, np.zeros(3), dout, (1, 1), pad, (1, 1), 3)
    dx, dW, db = nb.conv2d_backward(dout, x, W, (1, 1), pad, (1, 1), 3, "NCHW", True, algorithm="direct")
    for got, want in ((dW, dW_ref), (db, db_ref)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-10)
