"""The convolution family through the public API, on every backend, against torch.nn.functional in float64.

conv2d (groups, depthwise, depthwise multiplier, every pad form, stride, dilation, both layouts),
conv_transpose2d (output_padding; also as the adjoint of conv2d), max_pool2d (ceil mode, dilation),
avg_pool2d (ceil mode, count_include_pad), global_avg_pool2d: outputs and every gradient, on
hypothesis-drawn non-square cases in float32 and float64. PyTorch has no asymmetric padding
argument: asymmetric convolutions are compared with torch on an explicitly zero-padded input, and
asymmetric pools with :mod:`fastconv.testing.reference` (itself checked against torch in
tests/test_testing.py). Every call also checks that its inputs are unchanged and that NHWC gives
the NCHW result transposed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.testing import ALGORITHM_TOLERANCES, TOLERANCES, check_backend
from fastconv.testing import reference as ref

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]


# ---------------------------------------------------------------------------------------------------
# Helpers: pad forms (resolved here independently of fastconv), layouts, comparisons
# ---------------------------------------------------------------------------------------------------


def resolve_pad(form: Any, kernel, dilation, stride, in_hw, kind: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) a pad form means, from the spec: "same" for a conv pads
    dilation*(k - 1) in all, for a pool TensorFlow's max((ceil(H/s) - 1)*s + k_eff - H, 0);
    the odd one at the bottom/right."""
    if isinstance(form, str):
        if form == "valid":
            return (0, 0, 0, 0)
        totals = []
        for k, d, s, size in zip(kernel, dilation, stride, in_hw):
            k_eff = d * (k - 1) + 1
            if kind == "conv":
                totals.append(k_eff - 1)
            else:
                out = -(-size // s)
                totals.append(max((out - 1) * s + k_eff - size, 0))
        th, tw = totals
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(form, int):
        return (form, form, form, form)
    if isinstance(form[0], tuple):
        return (*form[0], *form[1])
    return (form[0], form[0], form[1], form[1])


@st.composite
def pad_forms(draw, kernel, dilation, stride, kind: str, max_pad: tuple[int, int] = (2, 2)):
    """A pad in one of the forms users write: int, (h, w), "valid", "same" (conv: stride 1 only),
    ((top, bottom), (left, right))."""
    forms = ["int", "pair", "valid", "nested"]
    if kind == "pool" or tuple(stride) == (1, 1):
        forms.append("same")
    form = draw(st.sampled_from(forms))
    mh, mw = max_pad
    if form == "int":
        return draw(st.integers(0, min(mh, mw)))
    if form == "pair":
        return (draw(st.integers(0, mh)), draw(st.integers(0, mw)))
    if form == "nested":
        return (
            (draw(st.integers(0, mh)), draw(st.integers(0, mh))),
            (draw(st.integers(0, mw)), draw(st.integers(0, mw))),
        )
    return form


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else nhwc(a)


def as_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def t64(a: np.ndarray) -> Any:
    """A float64 torch leaf of the (already dtype-rounded) values of ``a``."""
    return torch.from_numpy(np.asarray(a, np.float64).copy()).requires_grad_(True)


def assert_close(got: Any, want: Any, dtype, what: str, tol: float | None = None) -> None:
    """max|got - want| <= tol * max(1, max|want|), tol the checker's for ``dtype`` unless given."""
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want, np.float64)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, want {np.dtype(dtype)}"
    tol = TOLERANCES[np.dtype(dtype).name] if tol is None else tol
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) / max(
        1.0, float(np.abs(want).max(initial=0.0))
    )
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:g}"


def conv_tol(on, dtype, x_shape, W_shape, stride, pad, dilation, groups, layout, direction) -> float:
    """The checker's tolerance for the algorithm "auto" runs on this convolution (Winograd's is larger)."""
    name = fastconv.conv_algorithm(
        x_shape,
        W_shape,
        stride,
        pad,
        dilation,
        np.dtype(dtype).name,
        groups=groups,
        layout=layout,
        direction=direction,
        backend=on.name,
    )
    dt = np.dtype(dtype).name
    return max(TOLERANCES[dt], ALGORITHM_TOLERANCES.get(name, {}).get(dt, 0.0))


class Inputs:
    """Device copies of host arrays, and a check that the calls left them unchanged."""

    def __init__(self, on, **arrays: np.ndarray | None) -> None:
        self.on, self.host = on, arrays
        self.dev = {k: None if a is None else on(a.copy()) for k, a in arrays.items()}

    def __getitem__(self, key: str) -> Any:
        return self.dev[key]

    def assert_unchanged(self) -> None:
        for k, a in self.host.items():
            if a is not None:
                after = self.on.host(self.dev[k])
                assert np.array_equal(after, a, equal_nan=True), f"the call modified its input {k}"


def host(on, a: Any) -> np.ndarray | None:
    return None if a is None else np.asarray(on.host(a))


# ---------------------------------------------------------------------------------------------------
# conv2d and its gradients
# ---------------------------------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["dense", "groups 2", "depthwise", "multiplier"]))
    if kind == "dense":
        groups, cg, fg = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif kind == "groups 2":
        groups, cg, fg = 2, draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:  # depthwise: groups == C, one input channel per group; a multiplier of 2 or 3 filters each
        groups, cg, fg = draw(st.integers(1, 4)), 1, (1 if kind == "depthwise" else draw(st.integers(2, 3)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = draw(pad_forms(kernel, dilation, stride, "conv"))
    p = resolve_pad(pad, kernel, dilation, stride, (0, 0), "conv")
    h = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - p[0] - p[1]), 7))
    w = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - p[2] - p[3]), 7))
    return dict(
        x_shape=(draw(st.integers(1, 2)), groups * cg, h, w),
        W_shape=(groups * fg, cg, *kernel),
        stride=stride,
        pad=pad,
        pad4=p,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )


def torch_conv(x, W, b, c) -> Any:
    top, bottom, left, right = c["pad4"]
    return F.conv2d(F.pad(x, (left, right, top, bottom)), W, b, c["stride"], 0, c["dilation"], c["groups"])


@SETTINGS
@given(c=conv_cases(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_conv2d_and_its_gradients_equal_torch_in_both_layouts(on, c, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["x_shape"]).astype(dtype)
    W = rng.standard_normal(c["W_shape"]).astype(dtype)
    b = rng.standard_normal(c["W_shape"][0]).astype(dtype) if c["bias"] else None
    xt, Wt = t64(x), t64(W)
    bt = None if b is None else t64(b)
    yt = torch_conv(xt, Wt, bt, c)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(dout.astype(np.float64)))
    geometry = (c["stride"], c["pad"], c["dilation"], c["groups"])

    results = {}
    for layout in LAYOUTS:
        xl, dl = in_layout(x, layout), in_layout(dout, layout)
        args = (xl.shape, W.shape, c["stride"], c["pad"], c["dilation"], c["groups"], layout)
        tol_f = conv_tol(on, dtype, *args, direction="forward")
        tol_b = conv_tol(on, dtype, *args, direction="backward")
        inputs = Inputs(on, x=xl, W=W, b=b, dout=dl)
        y = host(
            on, fastconv.conv2d(inputs["x"], inputs["W"], inputs["b"], *geometry, layout, backend=on.name)
        )
        dx, dW, db = (
            host(on, g)
            for g in fastconv.conv2d_backward(
                inputs["dout"], inputs["x"], inputs["W"], *geometry, layout, need_dx=True, backend=on.name
            )
        )
        no_dx = fastconv.conv2d_backward(
            inputs["dout"], inputs["x"], inputs["W"], *geometry, layout, need_dx=False, backend=on.name
        )
        inputs.assert_unchanged()
        assert no_dx[0] is None
        assert_close(y, in_layout(yt.detach().numpy(), layout), dtype, f"y ({layout})", tol_f)
        assert_close(dx, in_layout(xt.grad.numpy(), layout), dtype, f"dx ({layout})", tol_b)
        assert_close(dW, Wt.grad, dtype, f"dW ({layout})", tol_b)
        assert_close(host(on, no_dx[1]), Wt.grad, dtype, f"dW, need_dx=False ({layout})", tol_b)
        assert_close(db, dout.astype(np.float64).sum(axis=(0, 2, 3)), dtype, f"db ({layout})")
        results[layout] = (y, dx)
    # NHWC is NCHW transposed (different code paths: within the tolerance, not bit for bit)
    for name, a, bb in zip(("y", "dx"), results["NCHW"], results["NHWC"]):
        assert_close(nhwc(a), bb.astype(np.float64), dtype, f"{name}: NHWC vs NCHW transposed", 2 * tol_b)


def test_conv2d_same_padding_keeps_the_size_and_puts_the_odd_pad_last(on, rng):
    x = rng.standard_normal((1, 2, 5, 6))
    W = rng.standard_normal((3, 2, 2, 4))  # even kernels: pads (0, 1) rows and (1, 2) cols
    y = host(on, fastconv.conv2d(on(x), on(W), None, 1, "same", backend=on.name))
    assert y.shape == (1, 3, 5, 6)
    want = F.conv2d(F.pad(t64(x), (1, 2, 0, 1)), t64(W))
    assert_close(y, want, np.float64, "y")
    with warnings.catch_warnings():  # torch warns that it pads a copy for even kernels
        warnings.simplefilter("ignore", UserWarning)
        torch_same = F.conv2d(t64(x), t64(W), padding="same")
    np.testing.assert_array_equal(want.detach().numpy(), torch_same.detach().numpy())  # torch's "same" agrees


# ---------------------------------------------------------------------------------------------------
# conv_transpose2d
# ---------------------------------------------------------------------------------------------------


@st.composite
def transpose_cases(draw, symmetric: bool):
    kind = draw(st.sampled_from(["dense", "groups 2", "depthwise", "multiplier"]))
    if kind == "dense":
        groups, cig, cog = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif kind == "groups 2":
        groups, cig, cog = 2, draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:
        groups, cig, cog = draw(st.integers(1, 3)), 1, (1 if kind == "depthwise" else draw(st.integers(2, 3)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # PyTorch: output_padding smaller than the stride or the dilation
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    if symmetric:
        pad = draw(st.sampled_from(["int", "pair"]))
        pad = draw(st.integers(0, 2)) if pad == "int" else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        pad = (
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        )
    p = resolve_pad(pad, kernel, dilation, stride, (0, 0), "conv")
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    out = [
        (size - 1) * s - p0 - p1 + d * (k - 1) + o + 1
        for size, s, p0, p1, d, k, o in zip((h, w), stride, p[::2], p[1::2], dilation, kernel, op)
    ]
    assume(min(out) >= 1)
    return dict(
        x_shape=(draw(st.integers(1, 2)), groups * cig, h, w),
        W_shape=(groups * cig, cog, *kernel),
        stride=stride,
        pad=pad,
        pad4=p,
        output_padding=op,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )


def _transpose_on_backend(on, c, x, W, b, dout, layout):
    geometry = (c["stride"], c["pad"], c["output_padding"], c["dilation"], c["groups"])
    inputs = Inputs(on, x=in_layout(x, layout), W=W, b=b, dout=in_layout(dout, layout))
    y = fastconv.conv_transpose2d(inputs["x"], inputs["W"], inputs["b"], *geometry, layout, backend=on.name)
    grads = fastconv.conv_transpose2d_backward(
        inputs["dout"], inputs["x"], inputs["W"], *geometry, layout, backend=on.name
    )
    inputs.assert_unchanged()
    return host(on, y), *(host(on, g) for g in grads)


@SETTINGS
@given(
    c=transpose_cases(symmetric=True),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_conv_transpose2d_and_its_gradients_equal_torch(on, c, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["x_shape"]).astype(dtype)
    W = rng.standard_normal(c["W_shape"]).astype(dtype)
    b = rng.standard_normal(c["W_shape"][1] * c["groups"]).astype(dtype) if c["bias"] else None
    xt, Wt = t64(x), t64(W)
    bt = None if b is None else t64(b)
    ph, pw = c["pad4"][0], c["pad4"][2]
    yt = F.conv_transpose2d(
        xt, Wt, bt, c["stride"], (ph, pw), c["output_padding"], c["groups"], c["dilation"]
    )
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(dout.astype(np.float64)))
    y, dx, dW, db = _transpose_on_backend(on, c, x, W, b, dout, layout)
    tol = 1e-4 if dtype == np.float32 else None  # dx and dW may run through Winograd ("auto")
    assert_close(as_nchw(y, layout), yt, dtype, "y", tol)
    assert_close(as_nchw(dx, layout), xt.grad, dtype, "dx", tol)
    assert_close(dW, Wt.grad, dtype, "dW", tol)
    assert_close(db, dout.astype(np.float64).sum(axis=(0, 2, 3)), dtype, "db")


@SETTINGS
@given(
    c=transpose_cases(symmetric=False),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_conv_transpose2d_with_asymmetric_pads_equals_the_reference(on, c, dtype, layout, seed):
    # output_padding may exceed the bottom/right pad here: the functional layer appends zero rows
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["x_shape"]).astype(dtype)
    W = rng.standard_normal(c["W_shape"]).astype(dtype)
    b = rng.standard_normal(c["W_shape"][1] * c["groups"]).astype(dtype) if c["bias"] else None
    geometry = (c["stride"], c["pad4"], c["output_padding"], c["dilation"], c["groups"])
    want_y = ref.conv_transpose2d(x, W, b, *geometry)
    dout = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx, want_dW, want_db = ref.conv_transpose2d_backward(dout, x, W, *geometry)
    y, dx, dW, db = _transpose_on_backend(on, c, x, W, b, dout, layout)
    tol = 1e-4 if dtype == np.float32 else None
    assert_close(as_nchw(y, layout), want_y, dtype, "y", tol)
    assert_close(as_nchw(dx, layout), want_dx, dtype, "dx", tol)
    assert_close(dW, want_dW, dtype, "dW", tol)
    assert_close(db, want_db, dtype, "db")


@SETTINGS
@given(c=conv_cases(), dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_conv_transpose2d_is_the_adjoint_of_conv2d(on, c, dtype, layout, data):
    # <conv2d(y, W), x> == <y, conv_transpose2d(x, W)>, y of conv_transpose2d's output shape, with an
    # output_padding (smaller than the stride: the rows conv2d's floor would drop)
    stride, p, dilation = c["stride"], c["pad4"], c["dilation"]
    op = tuple(data.draw(st.integers(0, s - 1)) for s in stride)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    W = rng.standard_normal(c["W_shape"]).astype(dtype)  # (F, C // groups, kh, kw) = (C_in, C_out // g, ...)
    n, ch = c["x_shape"][:2]
    conv_out = ref.conv2d(
        np.zeros(c["x_shape"]), np.zeros(W.shape), None, stride, p, dilation, c["groups"]
    ).shape
    y_hw = [
        (size - 1) * s - p0 - p1 + d * (k - 1) + o + 1
        for size, s, p0, p1, d, k, o in zip(conv_out[2:], stride, p[::2], p[1::2], dilation, W.shape[2:], op)
    ]
    assume(min(y_hw) >= 1)
    x = rng.standard_normal(conv_out).astype(dtype)
    y = rng.standard_normal((n, ch, *y_hw)).astype(dtype)
    pad = ((p[0], p[1]), (p[2], p[3]))
    inputs = Inputs(on, x=in_layout(x, layout), y=in_layout(y, layout), W=W)
    conv = host(
        on,
        fastconv.conv2d(
            inputs["y"], inputs["W"], None, stride, pad, dilation, c["groups"], layout, backend=on.name
        ),
    )
    tconv = host(
        on,
        fastconv.conv_transpose2d(
            inputs["x"], inputs["W"], None, stride, pad, op, dilation, c["groups"], layout, backend=on.name
        ),
    )
    inputs.assert_unchanged()
    assert conv.shape == in_layout(x, layout).shape and tconv.shape == in_layout(y, layout).shape
    lhs = float(np.vdot(conv.astype(np.float64), in_layout(x, layout).astype(np.float64)))
    rhs = float(np.vdot(in_layout(y, layout).astype(np.float64), tconv.astype(np.float64)))
    scale = float(
        np.abs(conv).astype(np.float64).ravel() @ np.abs(in_layout(x, layout)).astype(np.float64).ravel()
    )
    assert abs(lhs - rhs) <= (1e-4 if dtype == np.float32 else 1e-11) * max(1.0, scale), (lhs, rhs)


# ---------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------


@st.composite
def pool_cases(draw, dilated: bool):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    s = kernel if stride is None else stride
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pad = draw(pad_forms(kernel, dilation, s, "pool", max_pad=(k_eff[0] // 2, k_eff[1] // 2)))
    p = resolve_pad(pad, kernel, dilation, s, (h, w), "pool")
    assume(h + p[0] + p[1] >= k_eff[0] and w + p[2] + p[3] >= k_eff[1])
    ceil = draw(st.booleans())
    out_hw = (
        ref.pool_out_size(h, kernel[0], s[0], p[0], dilation[0], ceil, p[1]),
        ref.pool_out_size(w, kernel[1], s[1], p[2], dilation[1], ceil, p[3]),
    )
    # every window holds an input element (PyTorch's pad <= k/2 does not ensure it with dilation)
    for o, ss, p0, k, d, size in zip(out_hw, s, p[::2], kernel, dilation, (h, w)):
        assume(all(any(0 <= a * ss - p0 + i * d < size for i in range(k)) for a in range(o)))
    return dict(
        x_shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
        kernel=kernel,
        stride=stride,
        s=s,
        pad=pad,
        pad4=p,
        dilation=dilation,
        ceil=ceil,
        out_hw=out_hw,
    )


def _torch_takes(c) -> bool:
    """Whether torch's pools take this padding: symmetric, at most half the (undilated) kernel."""
    p, (kh, kw) = c["pad4"], c["kernel"]
    return p[0] == p[1] <= kh // 2 and p[2] == p[3] <= kw // 2


@SETTINGS
@given(c=pool_cases(dilated=True), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_max_pool2d_and_its_gradient_equal_torch_in_both_layouts(on, c, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["x_shape"]).astype(dtype)  # continuous: the maximum is unique
    want_y, want_arg = ref.max_pool2d(x, c["kernel"], c["s"], c["pad4"], c["dilation"], c["out_hw"])
    dout = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx = ref.max_pool2d_backward(dout, want_arg, x.shape, c["kernel"], c["s"], c["pad4"], c["dilation"])
    if _torch_takes(c):  # else the reference, checked against torch in tests/test_testing.py
        xt = t64(x)
        yt = F.max_pool2d(xt, c["kernel"], c["s"], c["pad4"][::2], c["dilation"], ceil_mode=c["ceil"])
        yt.backward(torch.from_numpy(dout.astype(np.float64)))
        want_y, want_dx = yt.detach().numpy(), xt.grad.numpy()
    geometry = (c["kernel"], c["stride"], c["pad"], c["dilation"], c["ceil"])
    for layout in LAYOUTS:
        inputs = Inputs(on, x=in_layout(x, layout), dout=in_layout(dout, layout))
        y, argmax = fastconv.max_pool2d(inputs["x"], *geometry, layout, backend=on.name)
        dx = fastconv.max_pool2d_backward(
            inputs["dout"], argmax, inputs["x"].shape, *geometry, layout, backend=on.name
        )
        inputs.assert_unchanged()
        argmax = host(on, argmax)
        assert argmax.dtype == np.int32
        np.testing.assert_array_equal(as_nchw(argmax, layout), want_arg)  # window-local, in both layouts
        assert_close(as_nchw(host(on, y), layout), want_y, dtype, f"y ({layout})", 0.0)  # a copy: exact
        assert_close(as_nchw(host(on, dx), layout), want_dx, dtype, f"dx ({layout})")


@SETTINGS
@given(c=pool_cases(dilated=True), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_max_pool2d_argmax_is_the_first_maximum_with_ties_infinities_and_nan(on, c, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, c["x_shape"]).astype(np.float64)  # many ties
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[rng.random(x.shape) < 0.1] = np.nan
    want_y, want_arg = ref.max_pool2d(x, c["kernel"], c["s"], c["pad4"], c["dilation"], c["out_hw"])
    y, argmax = fastconv.max_pool2d(
        on(in_layout(x, layout)),
        c["kernel"],
        c["stride"],
        c["pad"],
        c["dilation"],
        c["ceil"],
        layout,
        backend=on.name,
    )
    np.testing.assert_array_equal(as_nchw(host(on, argmax), layout), want_arg)
    np.testing.assert_array_equal(as_nchw(host(on, y), layout), want_y)  # NaN == NaN here


@SETTINGS
@given(
    c=pool_cases(dilated=False),
    include=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_avg_pool2d_and_its_gradient_equal_torch_in_both_layouts(on, c, include, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["x_shape"]).astype(dtype)
    want_y = ref.avg_pool2d(x, c["kernel"], c["s"], c["pad4"], c["out_hw"], include)
    dout = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx = ref.avg_pool2d_backward(dout, x.shape, c["kernel"], c["s"], c["pad4"], include)
    if _torch_takes(c):
        xt = t64(x)
        yt = F.avg_pool2d(xt, c["kernel"], c["s"], c["pad4"][::2], c["ceil"], include)
        yt.backward(torch.from_numpy(dout.astype(np.float64)))
        want_y, want_dx = yt.detach().numpy(), xt.grad.numpy()
    geometry = (c["kernel"], c["stride"], c["pad"], c["ceil"], include)
    results = {}
    for layout in LAYOUTS:
        inputs = Inputs(on, x=in_layout(x, layout), dout=in_layout(dout, layout))
        y = host(on, fastconv.avg_pool2d(inputs["x"], *geometry, layout, backend=on.name))
        dx = host(
            on,
            fastconv.avg_pool2d_backward(
                inputs["dout"], inputs["x"].shape, *geometry, layout, backend=on.name
            ),
        )
        inputs.assert_unchanged()
        assert_close(as_nchw(y, layout), want_y, dtype, f"y ({layout})")
        assert_close(as_nchw(dx, layout), want_dx, dtype, f"dx ({layout})")
        results[layout] = (y, dx)
    for name, a, bb in zip(("y", "dx"), results["NCHW"], results["NHWC"]):
        assert_close(nhwc(a), bb.astype(np.float64), dtype, f"{name}: NHWC vs NCHW transposed")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_global_avg_pool2d_and_its_gradient_equal_torch(on, rng, dtype, layout):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    xt = t64(x)
    yt = F.adaptive_avg_pool2d(xt, 1)
    dout = rng.standard_normal((2, 3, 1, 1)).astype(dtype)
    yt.backward(torch.from_numpy(dout.astype(np.float64)))
    inputs = Inputs(on, x=in_layout(x, layout), dout=in_layout(dout, layout))
    y = host(on, fastconv.global_avg_pool2d(inputs["x"], layout, backend=on.name))
    dx = host(
        on, fastconv.global_avg_pool2d_backward(inputs["dout"], inputs["x"].shape, layout, backend=on.name)
    )
    inputs.assert_unchanged()
    assert y.shape == ((2, 3, 1, 1) if layout == "NCHW" else (2, 1, 1, 3))
    assert_close(as_nchw(y, layout), yt, dtype, "y")
    assert_close(as_nchw(dx, layout), xt.grad, dtype, "dx")


def test_pool_same_padding_is_tensorflows(on, rng):
    # H=7, k=3, s=2: OH = ceil(7/2) = 4, total pad (4 - 1)*2 + 3 - 7 = 2 -> (1, 1);
    # W=6, k=2, s=2: OW = 3, total 0
    x = rng.standard_normal((1, 2, 7, 6))
    y, _ = fastconv.max_pool2d(on(x), (3, 2), 2, "same", backend=on.name)
    want, _ = ref.max_pool2d(x, (3, 2), (2, 2), (1, 1, 0, 0))
    np.testing.assert_array_equal(host(on, y), want)
    # W=5, k=2, s=2: OW = 3, total (3 - 1)*2 + 2 - 5 = 1 -> (0, 1), the odd pad last
    x = rng.standard_normal((1, 2, 7, 5))
    y = fastconv.avg_pool2d(on(x), (3, 2), 2, "same", count_include_pad=False, backend=on.name)
    want = ref.avg_pool2d(x, (3, 2), (2, 2), (1, 1, 0, 1), (4, 3), False)
    assert_close(host(on, y), want, np.float64, "y")


# ---------------------------------------------------------------------------------------------------
# The backend contract itself
# ---------------------------------------------------------------------------------------------------


def test_check_backend_passes(backend):
    report = check_backend(backend)
    for kernel in ("conv2d_backward_data", "avgpool2d_forward", "avgpool2d_backward"):
        assert kernel in report.max_errors
