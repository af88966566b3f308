"""The book-API layers of the conv family v2 (fastconv.layers): Convolution with groups and layouts,
Deconvolution, Pooling with ceil mode, AvgPooling and GlobalAvgPooling, against torch.nn modules in
float64 (weights copied in) on hypothesis-drawn shapes, and against central differences."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv.layers import AvgPooling, Convolution, Deconvolution, GlobalAvgPooling, Pooling
from fastconv.testing import gradcheck

torch = pytest.importorskip("torch")
nn = torch.nn

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float64, np.float32)
# hypothesis draws several cases per test body, each on a fresh backend fixture value
HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- helpers -----------------------------------------------------------------------------------------
def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW array in ``layout`` (contiguous)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def from_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An array in ``layout`` as NCHW."""
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_()


def expected_pad4(form, kernel=(1, 1), dilation=(1, 1), stride=(1, 1), in_hw=None, pool=False):
    """(top, bottom, left, right) the layer is expected to use for a pad written as ``form``."""
    if form == "valid":
        return (0, 0, 0, 0)
    if form == "same":
        totals = []
        for k, d, s, size in zip(kernel, dilation, stride, in_hw or (0, 0)):
            ek = d * (k - 1) + 1
            totals.append(max((-(-size // s) - 1) * s + ek - size, 0) if pool else ek - 1)
        return (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
    if isinstance(form, int):
        return (form,) * 4
    if isinstance(form[0], tuple):
        return (*form[0], *form[1])
    return (form[0], form[0], form[1], form[1])


def pad_forms(p4):
    """Every way of writing the 4-pad ``p4`` that means it."""
    t, b, l, r = p4
    forms = [((t, b), (l, r))]
    if t == b and l == r:
        forms.append((t, l))
        if t == l:
            forms.append(t)
    if p4 == (0, 0, 0, 0):
        forms.append("valid")
    return forms


def tolerance(dtype) -> dict:
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-4}


def assert_close(ours, expected, dtype, scale: float = 1.0) -> None:
    tol = tolerance(dtype)
    np.testing.assert_allclose(ours, expected, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0))


def check_layer(on, layer, x, torch_module, dtype, params=()):
    """Run ``layer`` (already holding its parameters on ``on``'s backend) forward and backward on x (NCHW,
    handed over in the layer's layout) and compare y, dx and the named parameter gradients with the torch
    module's. ``params``: (our gradient attribute, torch parameter name) pairs."""
    layout = layer.layout
    x_ours = on(to_layout(x, layout).astype(dtype))
    x_before = on.host(x_ours).copy()
    xt = tensor(x)
    y_t = torch_module(xt)
    y_ref = y_t.detach().numpy()
    y = on.host(layer.forward(x_ours))
    assert y.dtype == dtype
    assert_close(from_layout(y, layout), y_ref, dtype, np.abs(y_ref).max(initial=0))
    dout = np.random.default_rng(x.size).standard_normal(y_ref.shape)
    y_t.backward(torch.from_numpy(dout))
    dx = on.host(layer.backward(on(to_layout(dout, layout).astype(dtype))))
    assert dx.shape == x_ours.shape
    assert_close(from_layout(dx, layout), xt.grad.numpy(), dtype, np.abs(xt.grad.numpy()).max(initial=0))
    torch_grads = dict(torch_module.named_parameters())
    for ours_name, torch_name in params:
        g_ref = torch_grads[torch_name].grad.numpy()
        g = on.host(getattr(layer, ours_name))
        assert g.shape == g_ref.shape, (ours_name, g.shape, g_ref.shape)
        assert_close(g, g_ref, dtype, np.abs(g_ref).max(initial=0) * 4)
    np.testing.assert_array_equal(on.host(x_ours), x_before)  # the input is not modified


# -- Convolution ---------------------------------------------------------------------------------------
def torch_conv(W, b, stride, p4, dilation, groups):
    f, cg, kh, kw = W.shape
    t, bo, l, r = p4
    conv = nn.Conv2d(cg * groups, f, (kh, kw), stride, 0, dilation, groups, bias=b is not None).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(W))
        if b is not None:
            conv.bias.copy_(torch.from_numpy(b))
    return nn.Sequential(nn.ZeroPad2d((l, r, t, bo)), conv)


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    cg, fg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    same = draw(st.booleans())
    stride = (1, 1) if same else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if same:
        form = "same"
        p4 = expected_pad4("same", (kh, kw), (dh, dw))
    else:
        p4 = tuple(draw(st.integers(0, 2)) for _ in range(4))
        form = draw(st.sampled_from(pad_forms(p4)))
    if h + p4[0] + p4[1] < dh * (kh - 1) + 1 or w + p4[2] + p4[3] < dw * (kw - 1) + 1:
        h, w = h + dh * (kh - 1) + 1, w + dw * (kw - 1) + 1  # a window that fits
    return {
        "n": draw(st.integers(1, 2)),
        "groups": groups,
        "c": cg * groups,
        "f": fg * groups,
        "k": (kh, kw),
        "hw": (h, w),
        "stride": stride,
        "dilation": (dh, dw),
        "form": form,
        "p4": p4,
        "layout": draw(st.sampled_from(LAYOUTS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@HYPOTHESIS
@given(case=conv_cases())
def test_convolution_matches_torch_conv2d_with_groups_layouts_and_every_pad_form(on, case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], *case["hw"]))
    W = rng.standard_normal((case["f"], case["c"] // case["groups"], *case["k"]))
    b = rng.standard_normal(case["f"]) if case["bias"] else None
    dtype = case["dtype"]
    layer = Convolution(
        on(W.astype(dtype)),
        None if b is None else on(b.astype(dtype)),
        case["stride"],
        case["form"],
        case["dilation"],
        case["groups"],
        case["layout"],
    )
    module = torch_conv(W, b, case["stride"], case["p4"], case["dilation"], case["groups"])
    params = [("dW", "1.weight")] + ([("db", "1.bias")] if b is not None else [])
    check_layer(on, layer, x, module, dtype, params)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_convolution_is_grouped_by_channel_as_torch(on, rng, layout, multiplier):
    c = 3
    x = rng.standard_normal((2, c, 7, 6))
    W, b = rng.standard_normal((c * multiplier, 1, 3, 3)), rng.standard_normal(c * multiplier)
    layer = Convolution(on(W), on(b), 2, ((1, 0), (0, 1)), groups=c, layout=layout)
    module = torch_conv(W, b, 2, (1, 0, 0, 1), 1, c)
    check_layer(on, layer, x, module, np.float64, [("dW", "1.weight"), ("db", "1.bias")])


def test_convolution_keeps_its_existing_arguments(on, rng):
    x, W, b = rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    layer = Convolution(on(W), on(b), 1, 2, dilation=2, algorithm="gemm", need_dx=False)
    assert (layer.groups, layer.layout) == (1, "NCHW")
    y = layer.forward(on(x))
    module = torch_conv(W, b, 1, (2, 2, 2, 2), 2, 1)
    np.testing.assert_allclose(on.host(y), module(tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-10)
    assert layer.backward(on(rng.standard_normal(y.shape))) is None  # need_dx=False: dW and db only
    assert layer.dW.shape == W.shape and layer.db.shape == b.shape


# -- Deconvolution -------------------------------------------------------------------------------------
def torch_deconv(W, b, stride, p4, output_padding, dilation, groups):
    """PyTorch's ConvTranspose2d with an asymmetric padding: no padding, then the rows/columns cropped."""
    c_in, fg, kh, kw = W.shape
    t, bo, l, r = p4
    deconv = nn.ConvTranspose2d(
        c_in, fg * groups, (kh, kw), stride, 0, output_padding, groups, bias=b is not None, dilation=dilation
    ).double()
    with torch.no_grad():
        deconv.weight.copy_(torch.from_numpy(W))
        if b is not None:
            deconv.bias.copy_(torch.from_numpy(b))

    class Cropped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deconv = deconv

        def forward(self, x):
            y = self.deconv(x)
            return y[:, :, t : y.shape[2] - bo, l : y.shape[3] - r]

    return Cropped()


@st.composite
def deconv_cases(draw):
    groups = draw(st.integers(1, 2))
    cg, fg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    hw = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    p4 = tuple(draw(st.integers(0, 2)) for _ in range(4))
    # the output must keep at least one row and column
    for axis in (0, 1):
        full = (hw[axis] - 1) * stride[axis] + dilation[axis] * (k[axis] - 1) + 1 + op[axis]
        if full - p4[2 * axis] - p4[2 * axis + 1] < 1:
            p4 = (0, 0, 0, 0)
    return {
        "n": draw(st.integers(1, 2)),
        "groups": groups,
        "c": cg * groups,
        "fg": fg,
        "k": k,
        "hw": hw,
        "stride": stride,
        "dilation": dilation,
        "op": op,
        "p4": p4,
        "form": draw(st.sampled_from(pad_forms(p4))),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@HYPOTHESIS
@given(case=deconv_cases())
def test_deconvolution_matches_torch_conv_transpose2d(on, case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], *case["hw"]))
    W = rng.standard_normal((case["c"], case["fg"], *case["k"]))
    b = rng.standard_normal(case["fg"] * case["groups"]) if case["bias"] else None
    dtype = case["dtype"]
    layer = Deconvolution(
        on(W.astype(dtype)),
        None if b is None else on(b.astype(dtype)),
        case["stride"],
        case["form"],
        case["op"],
        case["dilation"],
        case["groups"],
        case["layout"],
    )
    module = torch_deconv(W, b, case["stride"], case["p4"], case["op"], case["dilation"], case["groups"])
    params = [("dW", "deconv.weight")] + ([("db", "deconv.bias")] if b is not None else [])
    check_layer(on, layer, x, module, dtype, params)


def test_deconvolution_is_the_adjoint_of_convolution_in_its_input(on, rng):
    """<conv(x), y> == <x, deconv(y)> with the same W, stride, pad, dilation and groups."""
    W = rng.standard_normal((4, 1, 3, 2))  # groups 2: C 2, F 4
    conv = Convolution(on(W), None, (2, 1), ((1, 0), (0, 1)), 1, 2, "NHWC")
    x = rng.standard_normal((2, 6, 5, 2))  # every row and column of x is read by some window
    y = on.host(conv.forward(on(x)))
    # the transposed convolution's W is (C_in, C_out // groups, kh, kw): conv's (F, C // g) read that way
    deconv = Deconvolution(on(W), None, (2, 1), ((1, 0), (0, 1)), (0, 0), 1, 2, "NHWC")
    v = rng.standard_normal(y.shape)
    back = on.host(deconv.forward(on(v)))
    assert back.shape == x.shape
    np.testing.assert_allclose((y * v).sum(), (x * back).sum(), rtol=1e-10)


# -- Pooling -------------------------------------------------------------------------------------------
class _ConstPadPool(nn.Module):
    """Explicit (possibly asymmetric) padding with ``value``, then ``pool`` without padding."""

    def __init__(self, p4, value, pool) -> None:
        super().__init__()
        t, b, l, r = p4
        self.pad = nn.ConstantPad2d((l, r, t, b), value)
        self.pool = pool

    def forward(self, x):
        return self.pool(self.pad(x))


class _ExcludePadAvg(nn.Module):
    """Average over the input elements of each window only (count_include_pad=False) with an asymmetric
    padding: the window sums of the zero-padded x over those of a zero-padded mask of ones."""

    def __init__(self, k, s, p4) -> None:
        super().__init__()
        t, b, l, r = p4
        self.pad = nn.ZeroPad2d((l, r, t, b))
        self.k, self.s = k, s

    def forward(self, x):
        ones = torch.ones_like(x[:1, :1])
        f = torch.nn.functional
        return f.avg_pool2d(self.pad(x), self.k, self.s) / f.avg_pool2d(self.pad(ones), self.k, self.s)


@st.composite
def pool_cases(draw, max_pool: bool):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if max_pool else (1, 1)
    hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    ek = [d * (kk - 1) + 1 for kk, d in zip(k, dilation)]
    hw = tuple(max(size, e) for size, e in zip(hw, ek))  # a window that fits without padding
    kind = draw(st.sampled_from(["symmetric", "asymmetric", "same"]))
    # torch's ceil rule is for its own (symmetric) padding
    ceil_mode = kind == "symmetric" and draw(st.booleans())
    if kind == "same":
        form = "same"
        p4 = expected_pad4("same", k, dilation, stride, hw, pool=True)
    else:
        # at most half the window, as fastconv requires (torch's own padding: half the undilated kernel)
        if kind == "symmetric":
            ph, pw = draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))
            p4 = (ph, ph, pw, pw)
        else:
            ph, pw = draw(st.integers(0, ek[0] // 2)), draw(st.integers(0, ek[1] // 2))
            p4 = (ph, draw(st.integers(0, ek[0] // 2)), pw, draw(st.integers(0, ek[1] // 2)))
        form = draw(st.sampled_from(pad_forms(p4)))
    return {
        "kind": kind,
        "n": draw(st.integers(1, 2)),
        "c": draw(st.integers(1, 3)),
        "k": k,
        "hw": hw,
        "stride": stride,
        "dilation": dilation,
        "form": form,
        "p4": p4,
        "ceil_mode": ceil_mode,
        "count_include_pad": draw(st.booleans()),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@HYPOTHESIS
@given(case=pool_cases(max_pool=True))
def test_pooling_matches_torch_max_pool2d_with_ceil_mode_layouts_and_pad_forms(on, case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], *case["hw"]))
    t, b, l, r = case["p4"]
    if case["kind"] == "symmetric":
        module = nn.MaxPool2d(
            case["k"], case["stride"], (t, l), case["dilation"], ceil_mode=case["ceil_mode"]
        )
    else:
        module = _ConstPadPool(
            case["p4"], -np.inf, nn.MaxPool2d(case["k"], case["stride"], 0, case["dilation"])
        )
    layer = Pooling(
        *case["k"], case["stride"], case["form"], case["ceil_mode"], case["layout"], dilation=case["dilation"]
    )
    check_layer(on, layer, x, module, case["dtype"])


@HYPOTHESIS
@given(case=pool_cases(max_pool=False))
def test_avg_pooling_matches_torch_avg_pool2d_with_either_divisor(on, case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], *case["hw"]))
    t, b, l, r = case["p4"]
    include = case["count_include_pad"]
    if case["kind"] == "symmetric":
        module = nn.AvgPool2d(case["k"], case["stride"], (t, l), case["ceil_mode"], include)
    elif include:
        module = _ConstPadPool(case["p4"], 0.0, nn.AvgPool2d(case["k"], case["stride"]))
    else:
        module = _ExcludePadAvg(case["k"], case["stride"], case["p4"])
    layer = AvgPooling(*case["k"], case["stride"], case["form"], case["ceil_mode"], include, case["layout"])
    check_layer(on, layer, x, module, case["dtype"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pooling_matches_torch_adaptive_avg_pool(on, rng, layout, dtype):
    x = rng.standard_normal((3, 4, 5, 7))
    layer = GlobalAvgPooling(layout)
    check_layer(on, layer, x, nn.AdaptiveAvgPool2d(1), dtype)
    y = layer.forward(on(to_layout(x, layout)))
    assert y.shape == ((3, 4, 1, 1) if layout == "NCHW" else (3, 1, 1, 4))


def test_ceil_mode_adds_the_last_partial_window():
    x = np.arange(2 * 5 * 5, dtype=np.float64).reshape(1, 2, 5, 5)
    assert Pooling(2, 2, 2).forward(x).shape == (1, 2, 2, 2)
    y = Pooling(2, 2, 2, ceil_mode=True).forward(x)
    assert y.shape == (1, 2, 3, 3)
    assert y[0, 0, 2, 2] == x[0, 0, 4, 4]  # the last window holds one element
    avg = AvgPooling(2, 2, 2, ceil_mode=True, count_include_pad=True).forward(x)
    assert avg[0, 0, 2, 2] == x[0, 0, 4, 4]  # the part past the input is never counted (no padding)


def test_pool_defaults_are_the_books():
    assert Pooling(2, 2).stride == 2 and AvgPooling(2, 2).stride == 2
    p = AvgPooling(3, 3)
    assert (p.pad, p.ceil_mode, p.count_include_pad, p.layout) == (0, False, True, "NCHW")
    assert GlobalAvgPooling().layout == "NCHW"


# -- numerical gradients -------------------------------------------------------------------------------
def test_gradcheck_convolution_grouped_channels_last_asymmetric_pad(rng):
    W, b = rng.standard_normal((4, 1, 3, 2)), rng.standard_normal(4)
    layer = Convolution(W, b, (2, 1), ((1, 0), (2, 1)), (1, 2), groups=2, layout="NHWC")
    result = gradcheck(layer, rng.standard_normal((2, 5, 6, 2)), rtol=1e-6)
    assert set(result.errors) == {"x", "W", "b"}


def test_gradcheck_depthwise_convolution_with_same_padding(rng):
    W, b = rng.standard_normal((6, 1, 2, 2)), rng.standard_normal(6)
    layer = Convolution(W, b, 1, "same", groups=3)
    gradcheck(layer, rng.standard_normal((2, 3, 4, 5)), rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_deconvolution(rng, layout):
    W, b = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(2)
    layer = Deconvolution(W, b, 2, ((1, 0), (0, 1)), 1, 1, groups=2, layout=layout)
    x = to_layout(rng.standard_normal((2, 4, 3, 4)), layout)
    result = gradcheck(layer, x, rtol=1e-6)
    assert set(result.errors) == {"x", "W", "b"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_max_pooling_in_ceil_mode(rng, layout):
    x = to_layout(rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 7.0, layout)  # no ties
    gradcheck(Pooling(3, 2, 2, 1, ceil_mode=True, layout=layout), x, rtol=1e-6)


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_avg_pooling(rng, layout, include):
    x = to_layout(rng.standard_normal((2, 2, 5, 6)), layout)
    gradcheck(AvgPooling(3, 2, 2, ((1, 0), (1, 1)), False, include, layout), x, rtol=1e-6)
    gradcheck(AvgPooling(3, 3, 2, 1, True, include, layout), x, rtol=1e-6)


def test_gradcheck_global_avg_pooling(rng):
    gradcheck(GlobalAvgPooling("NHWC"), rng.standard_normal((2, 3, 4, 5)), rtol=1e-6)


# -- backward before forward -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, dout_shape",
    [
        (lambda r: Deconvolution(r.standard_normal((2, 3, 2, 2)), None), (1, 3, 3, 3)),
        (lambda r: AvgPooling(2, 2), (1, 1, 2, 2)),
        (lambda r: GlobalAvgPooling("NHWC"), (1, 1, 1, 2)),
    ],
    ids=["Deconvolution", "AvgPooling", "GlobalAvgPooling"],
)
def test_backward_before_forward_names_the_new_layers(rng, make, dout_shape):
    layer = make(rng)
    expected = (
        f"{type(layer).__name__}: backward() was called before forward(): backward needs what forward saves; "
        "call forward(x) first"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        layer.backward(rng.standard_normal(dout_shape))
