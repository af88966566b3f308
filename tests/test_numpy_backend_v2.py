"""The NumPy backend's contract-v2 kernels, called directly, against torch.nn.functional in float64.

Hypothesis draws the shapes: non-square kernels and inputs, strides, asymmetric pads
(top, bottom, left, right), dilations, groups (plain, grouped, depthwise, depthwise multiplier), ceil
mode, both layouts and both dtypes; inputs are fresh standard-normal numbers. Gradients come from
torch's autograd. Errors are measured against the same computation on absolute values (the size of
the sums), so float32 and float64 share one criterion each.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastconv.backends import numpy as B
from fastconv.backends.numpy import winograd

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)  # the machine is shared; these arrays are tiny

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
SETTINGS = settings(max_examples=40, deadline=None)
LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)


# ---------------------------------------------------------------------------------------------- helpers


def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW array stored in ``layout`` (C-contiguous)."""
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def from_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An array stored in ``layout`` as NCHW."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def t64(a: np.ndarray, grad: bool = False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def torch_pad(pad):
    """(top, bottom, left, right) as F.pad wants it: (left, right, top, bottom)."""
    top, bottom, left, right = pad
    return (left, right, top, bottom)


def out_size(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil_mode: bool) -> int:
    """The spec's output size (floor; ceil drops a last window starting past the input and top pad)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    o = -(-span // s) + 1
    return o - 1 if (o - 1) * s >= size + p0 else o


def assert_close(got: np.ndarray, want, scale, dtype) -> None:
    """|got - want| <= rtol * max(scale, 1) elementwise; want and scale are float64 tensors or arrays."""
    want = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=np.float64)
    scale = np.asarray(scale.detach() if hasattr(scale, "detach") else scale, dtype=np.float64)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want)
    bound = RTOL[dtype] * np.maximum(scale, 1.0)
    assert np.all(err <= bound), f"max err/bound {float((err / bound).max()):.3g}"


def assert_fresh(outputs, inputs) -> None:
    """Every output is C-contiguous and shares no memory with an input or another output."""
    outputs = [o for o in outputs if o is not None]
    for i, o in enumerate(outputs):
        assert o.flags.c_contiguous
        assert not any(np.shares_memory(o, a) for a in inputs)
        assert not any(np.shares_memory(o, p) for p in outputs[i + 1 :])


def window_has_input(size: int, k: int, s: int, p0: int, d: int, n_out: int) -> bool:
    """Every window along this axis holds at least one input row (the callers' guarantee)."""
    return all(any(0 <= o * s - p0 + i * d < size for i in range(k)) for o in range(n_out))


# ---------------------------------------------------------------------------------------------- convolution


@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise", "multiplier"]))
    if kind == "plain":
        groups, cg, fg = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups, cg, fg = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    else:
        groups, cg, fg = draw(st.integers(1, 4)), 1, 1 if kind == "depthwise" else draw(st.integers(2, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    ek = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    h = draw(st.integers(max(1, ek[0] - pad[0] - pad[1]), ek[0] + 6))
    w = draw(st.integers(max(1, ek[1] - pad[2] - pad[3]), ek[1] + 6))
    return dict(
        n=draw(st.integers(1, 2)),
        groups=groups,
        C=groups * cg,
        F=groups * fg,
        hw=(h, w),
        k=(kh, kw),
        stride=stride,
        pad=pad,
        dilation=dilation,
        bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)),
        algorithm=draw(st.sampled_from(["gemm", "direct"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def torch_conv(x, W, b, dout, stride, pad, dilation, groups):
    """y, dx, dW, db of torch's conv2d (pad through F.pad, so asymmetric pads work), float64."""
    xt, Wt = t64(x, True), t64(W, True)
    bt = None if b is None else t64(b, True)
    y = F.conv2d(F.pad(xt, torch_pad(pad)), Wt, bt, stride, 0, dilation, groups)
    y.backward(t64(dout))
    return y, xt.grad, Wt.grad, None if b is None else bt.grad


@SETTINGS
@given(case=conv_cases())
def test_conv2d_forward_backward_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    dt, layout, groups = case["dtype"], case["layout"], case["groups"]
    n, c, f, (h, w), (kh, kw) = case["n"], case["C"], case["F"], case["hw"], case["k"]
    stride, pad, dilation = case["stride"], case["pad"], case["dilation"]
    x = rng.standard_normal((n, c, h, w)).astype(dt)
    W = rng.standard_normal((f, c // groups, kh, kw)).astype(dt)
    b = rng.standard_normal(f).astype(dt) if case["bias"] else None
    oh = out_size(h, kh, stride[0], pad[0], pad[1], dilation[0], False)
    ow = out_size(w, kw, stride[1], pad[2], pad[3], dilation[1], False)
    dout = rng.standard_normal((n, f, oh, ow)).astype(dt)
    want = torch_conv(x, W, b, dout, stride, pad, dilation, groups)
    scale = torch_conv(
        np.abs(x), np.abs(W), None if b is None else np.abs(b), np.abs(dout), stride, pad, dilation, groups
    )

    xl, dl = to_layout(x, layout), to_layout(dout, layout)
    inputs = [a for a in (xl, W, b, dl) if a is not None]
    copies = [a.copy() for a in inputs]
    args = (stride, pad, dilation, groups, layout)
    y = B.conv2d_forward(xl, W, b, *args, algorithm=case["algorithm"])
    dx, dW, db = B.conv2d_backward(dl, xl, W, *args, algorithm=case["algorithm"])
    no_dx, dW2, db2 = B.conv2d_backward(dl, xl, W, *args, need_dx=False, algorithm=case["algorithm"])
    dx_data = B.conv2d_backward_data(dl, W, xl.shape, *args)
    assert all(np.array_equal(a, c) for a, c in zip(inputs, copies))  # inputs untouched

    assert y.shape == to_layout(dout, layout).shape and dx.shape == xl.shape
    assert_close(from_layout(y, layout), want[0], scale[0], dt)
    assert_close(from_layout(dx, layout), want[1], scale[1], dt)
    assert_close(dW, want[2], scale[2], dt)
    assert_close(db, dout.astype(np.float64).sum(axis=(0, 2, 3)), np.abs(dout).sum(axis=(0, 2, 3)), dt)
    assert no_dx is None and np.array_equal(dW2, dW) and np.array_equal(db2, db)
    # conv2d_backward_data is the dx of conv2d_backward: the same code as "gemm", the same sums for "direct"
    if case["algorithm"] == "gemm":
        assert np.array_equal(dx_data, dx)
    assert_close(from_layout(dx_data, layout), want[1], scale[1], dt)
    assert_fresh([y, dx, dW, db, dx_data, dW2, db2], inputs)


@st.composite
def winograd_cases(draw):
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - pad[0] - pad[1]), 11))
    w = draw(st.integers(max(1, 3 - pad[2] - pad[3]), 11))
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 4)), h, w),
        F=draw(st.integers(1, 4)),
        pad=pad,
        dtype=draw(st.sampled_from(DTYPES)),
        algorithm=draw(st.sampled_from(sorted(winograd.TILE))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@SETTINGS
@given(case=winograd_cases())
def test_winograd_takes_the_4_tuple_pad(case):
    """Symmetric pads through conv2d_forward/backward; the kernels themselves also run asymmetric ones
    (algorithm_support refuses those, as the contract says)."""
    rng = np.random.default_rng(case["seed"])
    dt, pad, m = case["dtype"], case["pad"], winograd.TILE[case["algorithm"]]
    n, c, h, w = case["shape"]
    x = rng.standard_normal(case["shape"]).astype(dt)
    W = rng.standard_normal((case["F"], c, 3, 3)).astype(dt)
    b = rng.standard_normal(case["F"]).astype(dt)
    dout = rng.standard_normal((n, case["F"], h + pad[0] + pad[1] - 2, w + pad[2] + pad[3] - 2)).astype(dt)
    want = torch_conv(x, W, b, dout, (1, 1), pad, (1, 1), 1)
    copies = [a.copy() for a in (x, W, b, dout)]
    symmetric = pad[0] == pad[1] and pad[2] == pad[3]
    if symmetric:
        args = ((1, 1), pad, (1, 1), 1, "NCHW")
        y = B.conv2d_forward(x, W, b, *args, algorithm=case["algorithm"])
        dx, dW, db = B.conv2d_backward(dout, x, W, *args, algorithm=case["algorithm"])
    else:
        y = winograd.forward(x, W, b, pad, m=m)
        dx, dW, db = winograd.backward(dout, x, W, pad, m=m)
    assert all(np.array_equal(a, c) for a, c in zip((x, W, b, dout), copies))
    bound = winograd.ERROR_BOUND[(m, np.dtype(dt).name)]
    for got, ref in zip((y, dx, dW, db), want):
        ref = ref.detach().numpy()
        assert got.dtype == dt and got.shape == ref.shape
        assert np.abs(got - ref).max() <= bound * max(np.abs(ref).max(), 1.0)


def test_the_backend_states_contract_2_and_exports_every_kernel():
    from fastconv.backends import KERNELS, NEW_KERNELS

    assert B.contract == 2
    for kernel in (*KERNELS, *NEW_KERNELS):
        assert callable(getattr(B, kernel)) and kernel in B.__all__


def test_algorithm_support_and_choice():
    geometry = ((2, 4, 8, 8), (4, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    for name in ("gemm", "direct"):
        for groups, layout, pad in ((1, "NCHW", (1, 1, 1, 1)), (2, "NHWC", (0, 2, 1, 0))):
            assert B.algorithm_support(name, "forward", *geometry[:3], pad, (1, 1), groups, layout) is None
    for name in winograd.TILE:
        assert B.algorithm_support(name, "forward", *geometry, 1, "NCHW") is None
        assert "groups" in B.algorithm_support(name, "forward", *geometry, 2, "NCHW")
        assert "NCHW" in B.algorithm_support(name, "backward", *geometry, 1, "NHWC")
        assert "symmetric" in B.algorithm_support(
            name, "forward", *geometry[:3], (0, 1, 1, 1), (1, 1), 1, "NCHW"
        )
        assert "3x3" in B.algorithm_support(
            name, "forward", geometry[0], (4, 4, 3, 2), *geometry[2:], 1, "NCHW"
        )
    assert B.choose_algorithm("forward", *geometry, "float32", 1, "NCHW") == "gemm"
    assert B.choose_algorithm("backward", *geometry[:3], (0, 1, 0, 1), (1, 1), "float64", 4, "NHWC") == "gemm"
    assert tuple(B.algorithms) == ("gemm", "winograd", "winograd2", "direct")


def test_a_refused_algorithm_raises_instead_of_computing():
    rng = np.random.default_rng(7)
    x, W = rng.standard_normal((1, 4, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    with pytest.raises(ValueError, match="groups"):
        B.conv2d_forward(x, W, None, (1, 1), (1, 1, 1, 1), (1, 1), 2, "NCHW", algorithm="winograd")
    with pytest.raises(ValueError, match="unknown algorithm"):
        B.conv2d_forward(x, W, None, (1, 1), (1, 1, 1, 1), (1, 1), 2, "NCHW", algorithm="fft")


@SETTINGS
@given(case=conv_cases())
def test_im2col_and_col2im_match_unfold_and_fold(case):
    rng = np.random.default_rng(case["seed"])
    dt, (kh, kw), pad = case["dtype"], case["k"], case["pad"]
    stride, dilation = case["stride"], case["dilation"]
    x = rng.standard_normal((case["n"], case["C"], *case["hw"])).astype(dt)
    copy = x.copy()
    col = B.im2col(x, kh, kw, stride, pad, dilation)
    xp = F.pad(t64(x), torch_pad(pad))
    want = F.unfold(xp, (kh, kw), dilation, 0, stride)  # (N, C*kh*kw, L)
    assert np.array_equal(x, copy)
    assert col.dtype == dt and np.array_equal(
        col, want.transpose(1, 2).reshape(-1, want.shape[1]).numpy().astype(dt)
    )
    g = rng.standard_normal(col.shape).astype(dt)
    gcopy = g.copy()
    dx = B.col2im(g, x.shape, kh, kw, stride, pad, dilation)
    gt = t64(g).reshape(x.shape[0], -1, col.shape[1]).transpose(1, 2)
    folded = F.fold(gt, xp.shape[2:], (kh, kw), dilation, 0, stride)
    top, _, left, _ = pad
    folded = folded[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    scale = F.fold(gt.abs(), xp.shape[2:], (kh, kw), dilation, 0, stride)[
        :, :, top : top + x.shape[2], left : left + x.shape[3]
    ]
    assert np.array_equal(g, gcopy)
    assert_close(dx, folded, scale, dt)
    assert_fresh([col, dx], [x, g])


# ---------------------------------------------------------------------------------------------- max pooling


@st.composite
def pool_cases(draw, dilation=True):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    ek = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    pad = (
        draw(st.integers(0, ek[0] - 1)),
        draw(st.integers(0, ek[0] - 1)),
        draw(st.integers(0, ek[1] - 1)),
        draw(st.integers(0, ek[1] - 1)),
    )
    h = draw(st.integers(max(1, ek[0] - pad[0] - pad[1]), ek[0] + 6))
    w = draw(st.integers(max(1, ek[1] - pad[2] - pad[3]), ek[1] + 6))
    ceil_mode = draw(st.booleans())
    out_hw = (
        out_size(h, kh, stride[0], pad[0], pad[1], dil[0], ceil_mode),
        out_size(w, kw, stride[1], pad[2], pad[3], dil[1], ceil_mode),
    )
    assume(window_has_input(h, kh, stride[0], pad[0], dil[0], out_hw[0]))
    assume(window_has_input(w, kw, stride[1], pad[2], dil[1], out_hw[1]))
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
        k=(kh, kw),
        stride=stride,
        pad=pad,
        dilation=dil,
        ceil_mode=ceil_mode,
        out_hw=out_hw,
        count_include_pad=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@SETTINGS
@given(case=pool_cases())
def test_maxpool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    dt, layout, (kh, kw), (oh, ow) = case["dtype"], case["layout"], case["k"], case["out_hw"]
    stride, pad, dilation = case["stride"], case["pad"], case["dilation"]
    x = rng.standard_normal(case["shape"]).astype(dt)
    dout = rng.standard_normal((*x.shape[:2], oh, ow)).astype(dt)
    # torch on the -inf padded input (no padding of its own, so asymmetric pads work); its ceil mode
    # may keep one more window than the spec's rule, which is sliced off
    xt = t64(x, True)
    xpad = F.pad(xt, torch_pad(pad), value=-np.inf)
    yt, idx = F.max_pool2d(
        xpad, (kh, kw), stride, 0, dilation, ceil_mode=case["ceil_mode"], return_indices=True
    )
    yt, idx = yt[:, :, :oh, :ow], idx[:, :, :oh, :ow].numpy()
    (want_dx,) = torch.autograd.grad(yt, xt, t64(dout), retain_graph=True)
    (scale_dx,) = torch.autograd.grad(yt, xt, t64(np.abs(dout)))  # the size of each gradient sum
    # torch's indices are flat positions in the padded input: back to window-local i*kw + j
    wp = xpad.shape[3]
    rows = idx // wp - np.arange(oh)[:, None] * stride[0]
    cols = idx % wp - np.arange(ow)[None, :] * stride[1]
    want_argmax = (rows // dilation[0]) * kw + cols // dilation[1]

    xl, dl = to_layout(x, layout), to_layout(dout, layout)
    copies = [xl.copy(), dl.copy()]
    y, argmax = B.maxpool2d_forward(xl, kh, kw, stride, pad, dilation, (oh, ow), layout)
    am_copy = argmax.copy()
    dx = B.maxpool2d_backward(dl, argmax, xl.shape, kh, kw, stride, pad, dilation, layout)
    assert np.array_equal(xl, copies[0]) and np.array_equal(dl, copies[1]) and np.array_equal(argmax, am_copy)
    assert y.dtype == dt and argmax.dtype == np.int32 and y.shape == argmax.shape == dl.shape
    assert np.array_equal(from_layout(y, layout), yt.detach().numpy().astype(dt))
    assert np.array_equal(from_layout(argmax, layout), want_argmax)
    assert_close(from_layout(dx, layout), want_dx, scale_dx, dt)
    assert_fresh([y, argmax, dx], [xl, dl])


def brute_force_maxpool(x, kh, kw, stride, pad, dilation, out_hw):
    """y and argmax by a loop over windows: numpy.argmax of each window (-inf in the padding)."""
    top, bottom, left, right = pad
    n, c, h, w = x.shape
    y = np.empty((n, c, *out_hw), x.dtype)
    am = np.empty((n, c, *out_hw), np.int32)
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            window = np.full((n, c, kh * kw), -np.inf, x.dtype)
            for i in range(kh):
                for j in range(kw):
                    r, q = oh * stride[0] - top + i * dilation[0], ow * stride[1] - left + j * dilation[1]
                    if 0 <= r < h and 0 <= q < w:
                        window[:, :, i * kw + j] = x[:, :, r, q]
            am[:, :, oh, ow] = window.argmax(axis=-1)
            y[:, :, oh, ow] = np.take_along_axis(window, am[:, :, oh, ow][..., None], axis=-1)[..., 0]
    return y, am


@SETTINGS
@given(case=pool_cases())
def test_maxpool_ties_and_nan_take_the_first_in_window_order(case):
    """Rounded inputs make ties, and some NaNs: the first maximum (first NaN) in row-major order wins."""
    rng = np.random.default_rng(case["seed"])
    dt, layout, (kh, kw) = case["dtype"], case["layout"], case["k"]
    x = np.round(rng.standard_normal(case["shape"])).astype(dt)
    x[rng.random(x.shape) < 0.1] = np.nan
    args = (kh, kw, case["stride"], case["pad"], case["dilation"])
    want_y, want_am = brute_force_maxpool(x, *args, case["out_hw"])
    y, argmax = B.maxpool2d_forward(to_layout(x, layout), *args, case["out_hw"], layout)
    assert np.array_equal(from_layout(argmax, layout), want_am)
    assert np.array_equal(from_layout(y, layout), want_y, equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bad", [-1, 4])
def test_maxpool_backward_refuses_argmax_outside_the_window(layout, bad, rng):
    x = to_layout(rng.standard_normal((2, 3, 6, 5)), layout)
    y, argmax = B.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0, 1, 0), (1, 1), (3, 3), layout)
    argmax = argmax.copy()
    argmax.flat[5] = bad
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        B.maxpool2d_backward(np.ones_like(y), argmax, x.shape, 2, 2, (2, 2), (0, 0, 1, 0), (1, 1), layout)


# ---------------------------------------------------------------------------------------------- average pooling


def torch_avgpool(x, dout, k, stride, pad, ceil_mode, count_include_pad, out_hw):
    """y and dx in float64 on the zero-padded input (no padding of torch's own, so asymmetric pads
    work). count_include_pad: torch's average on it counts the padding; otherwise the sums over the
    windows divided by the sums of a mask of ones, the number of input elements in each window."""
    xt = t64(x, True)
    xpad = F.pad(xt, torch_pad(pad))
    oh, ow = out_hw
    if count_include_pad:
        y = F.avg_pool2d(xpad, k, stride, 0, ceil_mode, count_include_pad=True)[:, :, :oh, :ow]
    else:
        ones = F.pad(torch.ones(x.shape, dtype=torch.float64), torch_pad(pad))
        sums = F.avg_pool2d(xpad, k, stride, 0, ceil_mode, divisor_override=1)[:, :, :oh, :ow]
        counts = F.avg_pool2d(ones, k, stride, 0, ceil_mode, divisor_override=1)[:, :, :oh, :ow]
        y = sums / counts
    y.backward(t64(dout))
    return y, xt.grad


@SETTINGS
@given(case=pool_cases(dilation=False))
def test_avgpool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    dt, layout, k, (oh, ow) = case["dtype"], case["layout"], case["k"], case["out_hw"]
    stride, pad, ceil_mode, cip = case["stride"], case["pad"], case["ceil_mode"], case["count_include_pad"]
    x = rng.standard_normal(case["shape"]).astype(dt)
    dout = rng.standard_normal((*x.shape[:2], oh, ow)).astype(dt)
    want = torch_avgpool(x, dout, k, stride, pad, ceil_mode, cip, (oh, ow))
    scale = torch_avgpool(np.abs(x), np.abs(dout), k, stride, pad, ceil_mode, cip, (oh, ow))
    top, bottom, left, right = pad
    if top == bottom <= k[0] // 2 and left == right <= k[1] // 2:  # torch's own padding runs it too
        direct = F.avg_pool2d(t64(x), k, stride, (top, left), ceil_mode, cip)
        assert direct.shape[2:] == (oh, ow)
        assert np.allclose(direct.numpy(), want[0].detach().numpy(), rtol=1e-13, atol=1e-13)

    xl, dl = to_layout(x, layout), to_layout(dout, layout)
    copies = [xl.copy(), dl.copy()]
    y = B.avgpool2d_forward(xl, *k, stride, pad, (oh, ow), cip, layout)
    dx = B.avgpool2d_backward(dl, xl.shape, *k, stride, pad, cip, layout)
    assert np.array_equal(xl, copies[0]) and np.array_equal(dl, copies[1])
    assert y.shape == dl.shape and dx.shape == xl.shape
    assert_close(from_layout(y, layout), want[0], scale[0], dt)
    assert_close(from_layout(dx, layout), want[1], scale[1], dt)
    assert_fresh([y, dx], [xl, dl])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_average_pool_is_the_mean(layout, dtype, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    xl = to_layout(x, layout)
    y = B.avgpool2d_forward(xl, 5, 7, (5, 7), (0, 0, 0, 0), (1, 1), True, layout)
    assert np.allclose(
        from_layout(y, layout)[:, :, 0, 0], x.astype(np.float64).mean(axis=(2, 3)), rtol=RTOL[dtype] * 10
    )
    dout = to_layout(rng.standard_normal((2, 3, 1, 1)).astype(dtype), layout)
    dx = B.avgpool2d_backward(dout, xl.shape, 5, 7, (5, 7), (0, 0, 0, 0), False, layout)
    assert np.allclose(from_layout(dx, layout), from_layout(dout, layout) / 35, rtol=RTOL[dtype] * 10)
