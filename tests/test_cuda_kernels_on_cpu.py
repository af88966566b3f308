"""The CUDA kernels, compiled for the CPU with g++ and cpu_compat.h, agree with torch in float64.

These check the real index math of the real ``.cu`` sources on machines without a GPU: the same
files NVRTC compiles for the cupy backend, launched as one block of one thread and called through
ctypes on NumPy buffers with the cupy backend's own launch arguments. Most tests go further and run
the backend's whole ops (``fastconv.backends.cupy.ops`` / ``pooling``: grouped GEMMs, group chunks,
layouts, depthwise kernels) on the CPU through ``cuda_tools.check.cpu_backend``, which swaps CuPy for
NumPy and the CUDA launcher for the g++ build. Every output buffer starts as NaN, so an element a
kernel fails to write shows up. The oracle is ``torch.nn.functional`` in float64 (pads it cannot
express, asymmetric ones for pooling, go through ``fastconv.testing.reference``, itself checked
against torch in tests/test_testing.py); argmax follows the contract's first-maximum / NaN rule.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from cuda_tools import check as _cuda_check
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastconv.backends.cupy import kernels as _cu
from fastconv.backends.cupy import ops as _ops
from fastconv.functional import _window_without_input
from fastconv.testing import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = ("float32", "float64")
INDEX = ("int32", "int64")
LAYOUTS = ("NCHW", "NHWC")


@pytest.fixture(scope="module")
def kernels() -> _cuda_check.CPUKernels:
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the CPU build of the CUDA kernels, but the compiler {cxx!r} is missing")
        pytest.skip(f"C++ compiler {cxx!r} not found")
    return _cuda_check.cpu_kernels()


@contextmanager
def col_budget(nbytes: int | None):
    """Run the ops with a smaller column budget (None: unchanged), so grouped convolutions chunk."""
    saved = _ops.COL_BUDGET_BYTES
    if nbytes is not None:
        _ops.COL_BUDGET_BYTES = nbytes
    try:
        yield
    finally:
        _ops.COL_BUDGET_BYTES = saved


# ---------------------------------------------------------------------------------------------------
# Shapes and oracles
# ---------------------------------------------------------------------------------------------------


def _eff(k: int, d: int) -> int:
    return d * (k - 1) + 1


@st.composite
def windows(draw, max_pad: int = 3, dilate: bool = True):
    """kh, kw, stride, pad (top, bottom, left, right), dilation; non-square, asymmetric."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilate else (1, 1)
    pad = tuple(draw(st.integers(0, max_pad)) for _ in range(4))
    return kh, kw, stride, pad, dilation


def _spatial(draw, kh, kw, pad, dilation):
    eh, ew = _eff(kh, dilation[0]), _eff(kw, dilation[1])
    h = draw(st.integers(max(1, eh - pad[0] - pad[1]), eh + 6))
    w = draw(st.integers(max(1, ew - pad[2] - pad[3]), ew + 6))
    return h, w


@st.composite
def conv_cases(draw):
    """(x_shape NCHW, W_shape, stride, pad4, dilation, groups); Cg == 1 (depthwise) about a third."""
    kh, kw, stride, pad, dilation = draw(windows())
    h, w = _spatial(draw, kh, kw, pad, dilation)
    groups, cg, fg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    return (n, groups * cg, h, w), (groups * fg, cg, kh, kw), stride, pad, dilation, groups


def _out_hw(hw, kh, kw, stride, pad, dilation):
    return (
        ref.out_size(hw[0], kh, stride[0], pad[0], dilation[0], pad[1]),
        ref.out_size(hw[1], kw, stride[1], pad[2], dilation[1], pad[3]),
    )


def _to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _from_layout(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64).copy())


def _torch_padded(x_nchw: np.ndarray, pad) -> torch.Tensor:
    top, bottom, left, right = pad
    return F.pad(_t(x_nchw), (left, right, top, bottom))


def torch_conv(x, W, b, stride, pad, dilation, groups, dout=None):
    """float64 y (NCHW) and, given dout, (dx, dW, db) by autograd; asymmetric pads through F.pad."""
    xt, Wt = _t(x).requires_grad_(True), _t(W).requires_grad_(True)
    bt = None if b is None else _t(b).requires_grad_(True)
    top, bottom, left, right = pad
    y = F.conv2d(F.pad(xt, (left, right, top, bottom)), Wt, bt, stride, 0, dilation, groups)
    if dout is None:
        return y.detach().numpy()
    y.backward(_t(dout))
    db = bt.grad.numpy() if bt is not None else _t(dout).sum((0, 2, 3)).numpy()
    return y.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), db


def torch_im2col(x, kh, kw, stride, pad, dilation) -> np.ndarray:
    """Book layout (N*OH*OW, C*kh*kw) from F.unfold of the explicitly padded x."""
    n = x.shape[0]
    u = F.unfold(_torch_padded(x, pad), (kh, kw), dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
    return u.transpose(1, 2).reshape(n * u.shape[2], u.shape[1]).numpy()


def _close(got, want, dtype, scale_terms: int = 1):
    """Compare with a tolerance for float32 that grows with the magnitude of what was summed."""
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.dtype(dtype)
    assert not np.isnan(got).any() or np.isnan(want).any(), "an output element was never written"
    if dtype == "float64":
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * max(1.0, np.abs(want).max(initial=0)))
    else:
        atol = 2e-6 * np.sqrt(scale_terms) * max(1.0, np.abs(want).max(initial=0))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=atol)


def _draw_arrays(seed, dtype, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ---------------------------------------------------------------------------------------------------
# im2col / col2im kernels
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    g=windows(),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    seed=st.integers(0, 2**32 - 1),
)
def test_im2col_kernel_matches_torch_unfold_in_both_column_layouts(kernels, g, data, dtype, index, seed):
    kh, kw, stride, pad, dilation = g
    h, w = _spatial(data.draw, kh, kw, pad, dilation)
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), h, w)
    (x,) = _draw_arrays(seed, dtype, shape)
    expected = torch_im2col(x, *g)
    with _cuda_check.cpu_backend(kernels, index) as cb:
        col = cb.im2col(x, *g)
        col_t = _ops._im2col(x, *g, k_major=True)
    np.testing.assert_array_equal(col, expected.astype(dtype))  # a copy: bit for bit
    np.testing.assert_array_equal(col_t, col.T)


@SETTINGS
@given(
    g=windows(),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    seed=st.integers(0, 2**32 - 1),
)
def test_col2im_kernel_matches_torch_fold_and_is_the_adjoint_of_im2col(kernels, g, data, dtype, index, seed):
    kh, kw, stride, pad, dilation = g
    h, w = _spatial(data.draw, kh, kw, pad, dilation)
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), h, w)
    oh, ow = _out_hw((h, w), *g)
    col, x = _draw_arrays(seed, dtype, (shape[0] * oh * ow, shape[1] * kh * kw), shape)
    # torch.fold onto the padded plane, then crop: the sum over the columns reading each pixel
    top, bottom, left, right = pad
    u = _t(col).reshape(shape[0], oh * ow, -1).transpose(1, 2)
    folded = F.fold(u, (h + top + bottom, w + left + right), (kh, kw), dilation=dilation, stride=stride)
    expected = folded[:, :, top : top + h, left : left + w].numpy()
    with _cuda_check.cpu_backend(kernels, index) as cb:
        dx = cb.col2im(col, shape, *g)
        dx_t = _ops._col2im(np.ascontiguousarray(col.T), shape, *g, k_major=True)
        lhs = np.vdot(cb.im2col(x, *g).astype(np.float64), col.astype(np.float64))
    _close(dx, expected, dtype, kh * kw)
    np.testing.assert_array_equal(dx_t, dx)  # same gather order in both column layouts
    assert lhs == pytest.approx(np.vdot(x.astype(np.float64), dx.astype(np.float64)), rel=1e-5, abs=1e-5)


@SETTINGS
@given(g=windows(), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_nchw_channel_window_reads_and_writes_only_its_channels(kernels, g, data, dtype, seed):
    kh, kw, stride, pad, dilation = g
    h, w = _spatial(data.draw, kh, kw, pad, dilation)
    cx = data.draw(st.integers(2, 5))
    c0 = data.draw(st.integers(0, cx - 1))
    count = data.draw(st.integers(1, cx - c0))
    shape = (data.draw(st.integers(1, 2)), cx, h, w)
    (x,) = _draw_arrays(seed, dtype, shape)
    oh, ow = _out_hw((h, w), *g)
    (col,) = _draw_arrays(seed + 1, dtype, (count * kh * kw, shape[0] * oh * ow))
    with _cuda_check.cpu_backend(kernels) as cb:
        full = _ops._im2col(x, *g, k_major=True)
        part = _ops._im2col(x, *g, True, c0, count)
        dx = np.full(shape, np.nan, dtype=dtype)
        _ops._col2im(col, shape, *g, True, c0, count, out=dx)
        whole = np.zeros((cx * kh * kw, col.shape[1]), dtype=dtype)
        whole[c0 * kh * kw : (c0 + count) * kh * kw] = col
        dx_whole = cb.col2im(np.ascontiguousarray(whole.T), shape, *g)
    np.testing.assert_array_equal(part, full[c0 * kh * kw : (c0 + count) * kh * kw])
    assert np.isnan(dx[:, :c0]).all() and np.isnan(dx[:, c0 + count :]).all()
    np.testing.assert_array_equal(dx[:, c0 : c0 + count], dx_whole[:, c0 : c0 + count])


@SETTINGS
@given(
    g=windows(),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    seed=st.integers(0, 2**32 - 1),
)
def test_nhwc_im2col_gives_per_group_rows_n_oh_ow_and_columns_i_j_c(kernels, g, data, dtype, index, seed):
    kh, kw, stride, pad, dilation = g
    h, w = _spatial(data.draw, kh, kw, pad, dilation)
    groups, cg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    g0 = data.draw(st.integers(0, groups - 1))
    count = data.draw(st.integers(1, groups - g0))
    n = data.draw(st.integers(1, 2))
    (x,) = _draw_arrays(seed, dtype, (n, groups * cg, h, w))
    oh, ow = _out_hw((h, w), *g)
    # torch: (N, C*kh*kw, L) with C outermost -> (G, N*L, kh*kw*Cg) with (i, j, c) innermost
    u = F.unfold(_torch_padded(x, pad), (kh, kw), dilation=dilation, stride=stride).numpy()
    u = u.reshape(n, groups, cg, kh, kw, oh * ow).transpose(1, 0, 5, 3, 4, 2)
    expected = u.reshape(groups, n * oh * ow, kh * kw * cg)[g0 : g0 + count]
    x_nhwc = _to_layout(x, "NHWC")
    with _cuda_check.cpu_backend(kernels, index):
        col = _ops._im2col_nhwc(x_nhwc, *g, groups, g0, count)
        (dcol,) = _draw_arrays(seed + 1, dtype, col.shape)
        dx = np.full(x_nhwc.shape, np.nan, dtype=dtype)
        _ops._col2im_nhwc(dcol, x_nhwc.shape, *g, groups, g0, count, out=dx)
    np.testing.assert_array_equal(col, expected.astype(dtype))
    # col2im_nhwc writes exactly the chunk's channels, and is the adjoint of im2col_nhwc there
    chans = slice(g0 * cg, (g0 + count) * cg)
    assert not np.isnan(dx[..., chans]).any()
    assert np.isnan(np.delete(dx, np.arange(g0 * cg, (g0 + count) * cg), axis=3)).all()
    lhs = np.vdot(col.astype(np.float64), dcol.astype(np.float64))
    rhs = np.vdot(x_nhwc[..., chans].astype(np.float64), dx[..., chans].astype(np.float64))
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# Convolution: the backend's ops on the CPU build, against torch
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    case=conv_cases(),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    chunked=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv2d_forward_matches_torch_with_groups_depthwise_and_both_layouts(
    kernels, case, layout, dtype, bias, chunked, seed
):
    xs, ws, stride, pad, dilation, groups = case
    x, W, b = _draw_arrays(seed, dtype, xs, ws, (ws[0],))
    b = b if bias else None
    expected = torch_conv(x, W, b, stride, pad, dilation, groups)
    x_in = _to_layout(x, layout)
    x0, W0 = x_in.copy(), W.copy()
    with col_budget(1 if chunked else None), _cuda_check.cpu_backend(kernels) as cb:
        y = cb.conv2d_forward(x_in, W, b, stride, pad, dilation, groups, layout)
    assert y.flags.c_contiguous
    _close(_from_layout(y, layout), expected, dtype, ws[1] * ws[2] * ws[3])
    np.testing.assert_array_equal(x_in, x0)
    np.testing.assert_array_equal(W, W0)


@SETTINGS
@given(
    case=conv_cases(),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    chunked=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv2d_backward_matches_torch_autograd(kernels, case, layout, dtype, chunked, seed):
    xs, ws, stride, pad, dilation, groups = case
    oh, ow = _out_hw(xs[2:], ws[2], ws[3], stride, pad, dilation)
    x, W, dout = _draw_arrays(seed, dtype, xs, ws, (xs[0], ws[0], oh, ow))
    _, dx_ref, dW_ref, db_ref = torch_conv(x, W, None, stride, pad, dilation, groups, dout)
    x_in, dout_in = _to_layout(x, layout), _to_layout(dout, layout)
    dout0 = dout_in.copy()
    with col_budget(1 if chunked else None), _cuda_check.cpu_backend(kernels) as cb:
        dx, dW, db = cb.conv2d_backward(dout_in, x_in, W, stride, pad, dilation, groups, layout)
        none, dW2, db2 = cb.conv2d_backward(
            dout_in, x_in, W, stride, pad, dilation, groups, layout, need_dx=False
        )
        dx_only = cb.conv2d_backward_data(dout_in, W, x_in.shape, stride, pad, dilation, groups, layout)
    terms = xs[0] * oh * ow
    _close(_from_layout(dx, layout), dx_ref, dtype, ws[0] * ws[2] * ws[3])
    _close(dW, dW_ref, dtype, terms)
    _close(db, db_ref, dtype, terms)
    assert none is None
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)
    np.testing.assert_array_equal(dx_only, dx)
    np.testing.assert_array_equal(dout_in, dout0)


@pytest.mark.parametrize("threads", [1, 100, _cu.DW_FILTER_THREADS])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_dW_is_the_same_for_any_chunking_of_its_reduction(kernels, rng, threads, layout):
    # the chunk count P follows DW_FILTER_THREADS; every P gives the torch result (to rounding)
    xs, ws, stride, pad, dilation = (2, 3, 9, 7), (6, 1, 3, 2), (2, 1), (1, 0, 2, 1), (1, 2)
    x, W = rng.standard_normal(xs), rng.standard_normal(ws)
    oh, ow = _out_hw(xs[2:], 3, 2, stride, pad, dilation)
    dout = rng.standard_normal((2, 6, oh, ow))
    _, _, dW_ref, _ = torch_conv(x, W, None, stride, pad, dilation, 3, dout)
    saved = _cu.DW_FILTER_THREADS
    _cu.DW_FILTER_THREADS = threads
    try:
        first, _ = _cu.dw_bwd_filter_args(_to_layout(x, layout).shape, 6, 3, 2, stride, pad, dilation, layout)
        with _cuda_check.cpu_backend(kernels) as cb:
            _, dW, _ = cb.conv2d_backward(
                _to_layout(dout, layout), _to_layout(x, layout), W, stride, pad, dilation, 3, layout
            )
    finally:
        _cu.DW_FILTER_THREADS = saved
    assert (first.out_shape[0] == 1) == (threads == 1)  # one chunk, or several summed in order
    _close(dW, dW_ref, "float64")


def test_depthwise_dW_partial_sums_split_the_rows_into_whole_chunks():
    for rows_shape in [(1, 1, 1, 1), (3, 2, 17, 5), (4, 64, 30, 30)]:
        first, second = _cu.dw_bwd_filter_args(
            rows_shape, 2 * rows_shape[1], 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), "NCHW"
        )
        p, chunk = first.scalars[:2]
        rows = rows_shape[0] * rows_shape[2] * rows_shape[3]
        assert (p - 1) * chunk < rows <= p * chunk  # every chunk holds at least one row
        assert second.scalars == (p, 2 * rows_shape[1] * 9)


def test_grouped_conv_chunks_run_every_group_once():
    saved = _ops.COL_BUDGET_BYTES
    try:
        _ops.COL_BUDGET_BYTES = 100
        assert _ops._group_chunks(5, 40) == [(0, 2), (2, 2), (4, 1)]
        assert _ops._group_chunks(3, 1000) == [(0, 1), (1, 1), (2, 1)]
    finally:
        _ops.COL_BUDGET_BYTES = saved
    assert _ops._group_chunks(7, 10) == [(0, 7)]


# ---------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------


@st.composite
def pool_cases(draw, dilate: bool):
    """(x_shape NCHW, kh, kw, stride, pad4, dilation, ceil_mode, out_hw): pads at most half the
    (effective) window, as PyTorch allows, so every window holds an input element."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilate else (1, 1)
    eh, ew = _eff(kh, dilation[0]), _eff(kw, dilation[1])
    lim_h, lim_w = (eh // 2, ew // 2) if dilate else (kh // 2, kw // 2)
    pad = (
        draw(st.integers(0, lim_h)),
        draw(st.integers(0, lim_h)),
        draw(st.integers(0, lim_w)),
        draw(st.integers(0, lim_w)),
    )
    h = draw(st.integers(max(1, eh - pad[0] - pad[1]), eh + 6))
    w = draw(st.integers(max(1, ew - pad[2] - pad[3]), ew + 6))
    ceil_mode = draw(st.booleans())
    out_hw = (
        ref.pool_out_size(h, kh, stride[0], pad[0], dilation[0], ceil_mode, pad[1]),
        ref.pool_out_size(w, kw, stride[1], pad[2], dilation[1], ceil_mode, pad[3]),
    )
    # A dilated window made of padding only has no element of x to name: fastconv.max_pool2d refuses it
    # (functional._window_without_input), so the kernels never see one.
    assume(_window_without_input(h, kh, stride[0], pad[0], dilation[0], out_hw[0]) is None)
    assume(_window_without_input(w, kw, stride[1], pad[2], dilation[1], out_hw[1]) is None)
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    return x_shape, kh, kw, stride, pad, dilation, ceil_mode, out_hw


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


def _symmetric(pad) -> bool:
    return pad[0] == pad[1] and pad[2] == pad[3]


@SETTINGS
@given(
    case=pool_cases(dilate=True),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    kind=st.sampled_from(["random", "ties", "nan_inf"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_max_pool_forward_and_backward_match_torch_and_the_first_maximum_rule(
    kernels, case, layout, dtype, index, kind, seed
):
    xs, kh, kw, stride, pad, dilation, ceil_mode, out_hw = case
    rng = np.random.default_rng(seed)
    x = _pool_input(rng, xs, dtype, kind)
    dout = rng.standard_normal((xs[0], xs[1], *out_hw)).astype(dtype)
    x_in, dout_in = _to_layout(x, layout), _to_layout(dout, layout)
    with _cuda_check.cpu_backend(kernels, index) as cb:
        y, arg = cb.maxpool2d_forward(x_in, kh, kw, stride, pad, dilation, out_hw, layout)
        dx = cb.maxpool2d_backward(dout_in, arg, x_in.shape, kh, kw, stride, pad, dilation, layout)
    assert arg.dtype == np.int32 and y.shape == arg.shape == dout_in.shape
    # values: torch where it can express the padding (symmetric, at most half the kernel)
    torch_ok = _symmetric(pad) and pad[0] <= kh // 2 and pad[2] <= kw // 2
    if torch_ok:
        y_ref = F.max_pool2d(_t(x), (kh, kw), stride, (pad[0], pad[2]), dilation, ceil_mode).numpy()
    else:
        y_ref, _ = ref.max_pool2d(x, (kh, kw), stride, pad, dilation, out_hw)
    np.testing.assert_array_equal(_from_layout(y, layout), y_ref.astype(dtype))
    # argmax: the first maximum in row-major window order, NaN the maximum (torch takes the last NaN)
    y_r, arg_r = ref.max_pool2d(x, (kh, kw), stride, pad, dilation, out_hw)
    np.testing.assert_array_equal(_from_layout(arg, layout), arg_r)
    dx_ref = ref.max_pool2d_backward(dout, arg_r, xs, (kh, kw), stride, pad, dilation)
    _close(_from_layout(dx, layout), dx_ref, dtype, kh * kw)
    if kind == "random" and torch_ok:  # no ties: torch's gradient is the same
        xt = _t(x).requires_grad_(True)
        F.max_pool2d(xt, (kh, kw), stride, (pad[0], pad[2]), dilation, ceil_mode).backward(_t(dout))
        _close(_from_layout(dx, layout), xt.grad.numpy(), dtype, kh * kw)


@SETTINGS
@given(
    case=pool_cases(dilate=False),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    index=st.sampled_from(INDEX),
    count_include_pad=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_avg_pool_forward_and_backward_match_torch_divisor_rule(
    kernels, case, layout, dtype, index, count_include_pad, seed
):
    xs, kh, kw, stride, pad, _, ceil_mode, out_hw = case
    x, dout = _draw_arrays(seed, dtype, xs, (xs[0], xs[1], *out_hw))
    x_in, dout_in = _to_layout(x, layout), _to_layout(dout, layout)
    x0 = x_in.copy()
    with _cuda_check.cpu_backend(kernels, index) as cb:
        y = cb.avgpool2d_forward(x_in, kh, kw, stride, pad, out_hw, count_include_pad, layout)
        dx = cb.avgpool2d_backward(dout_in, x_in.shape, kh, kw, stride, pad, count_include_pad, layout)
    if _symmetric(pad):
        xt = _t(x).requires_grad_(True)
        yt = F.avg_pool2d(xt, (kh, kw), stride, (pad[0], pad[2]), ceil_mode, count_include_pad)
        yt.backward(_t(dout))
        y_ref, dx_ref = yt.detach().numpy(), xt.grad.numpy()
    else:  # torch cannot pad asymmetrically here; the reference (checked against torch) can
        y_ref = ref.avg_pool2d(x, (kh, kw), stride, pad, out_hw, count_include_pad)
        dx_ref = ref.avg_pool2d_backward(dout, xs, (kh, kw), stride, pad, count_include_pad)
    _close(_from_layout(y, layout), y_ref, dtype, kh * kw)
    _close(_from_layout(dx, layout), dx_ref, dtype, kh * kw)
    np.testing.assert_array_equal(x_in, x0)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "hw, k, stride, pad",
    [
        ((5, 6), (3, 2), (2, 2), (1, 0, 0, 1)),  # the last row window is cut at H + bottom
        ((7, 5), (4, 3), (3, 2), (2, 1, 1, 0)),
        ((6, 7), (3, 4), (2, 3), (0, 1, 2, 0)),
    ],
)
def test_avg_pool_ceil_mode_counts_no_element_past_the_bottom_right_padding(
    kernels, rng, hw, k, stride, pad, layout, count_include_pad
):
    out_hw = tuple(
        ref.pool_out_size(hw[a], k[a], stride[a], pad[2 * a], 1, True, pad[2 * a + 1]) for a in range(2)
    )
    x, dout = rng.standard_normal((2, 3, *hw)), rng.standard_normal((2, 3, *out_hw))
    with _cuda_check.cpu_backend(kernels) as cb:
        y = cb.avgpool2d_forward(_to_layout(x, layout), *k, stride, pad, out_hw, count_include_pad, layout)
        dx = cb.avgpool2d_backward(
            _to_layout(dout, layout), _to_layout(x, layout).shape, *k, stride, pad, count_include_pad, layout
        )
    y_ref = ref.avg_pool2d(x, k, stride, pad, out_hw, count_include_pad)
    dx_ref = ref.avg_pool2d_backward(dout, x.shape, k, stride, pad, count_include_pad)
    _close(_from_layout(y, layout), y_ref, "float64")
    _close(_from_layout(dx, layout), dx_ref, "float64")


def test_global_average_pooling_is_an_avg_pool_over_the_whole_plane(kernels, rng):
    x = rng.standard_normal((2, 5, 7, 3))  # NHWC
    with _cuda_check.cpu_backend(kernels) as cb:
        y = cb.avgpool2d_forward(x, 5, 7, (5, 7), (0, 0, 0, 0), (1, 1), True, "NHWC")
        dx = cb.avgpool2d_backward(np.ones_like(y), x.shape, 5, 7, (5, 7), (0, 0, 0, 0), True, "NHWC")
    np.testing.assert_allclose(y, x.mean(axis=(1, 2), keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 35), rtol=1e-13)


def test_max_pool_sends_gradient_to_the_first_maximum(kernels):
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    with _cuda_check.cpu_backend(kernels) as cb:
        y, argmax = cb.maxpool2d_forward(x, 2, 2, (1, 1), (0, 0, 0, 0), (1, 1), (1, 1))
        dx = cb.maxpool2d_backward(np.array([[[[5.0]]]]), argmax, x.shape, 2, 2, (1, 1), (0, 0, 0, 0), (1, 1))
    assert y.item() == 3.0 and argmax.item() == 1
    np.testing.assert_array_equal(dx, [[[[0.0, 5.0], [0.0, 0.0]]]])


def test_max_pool_treats_nan_as_the_maximum_and_padding_as_minus_infinity(kernels):
    x = np.array([[[[-5.0, np.nan], [np.inf, np.nan]]]], dtype=np.float32)
    with _cuda_check.cpu_backend(kernels) as cb:
        y, argmax = cb.maxpool2d_forward(x, 2, 2, (1, 1), (0, 0, 0, 0), (1, 1), (1, 1))
        assert np.isnan(y.item()) and argmax.item() == 1
        # a 3x3 window at the corner of a padded input sees -inf padding and the value -7
        y, argmax = cb.maxpool2d_forward(
            np.full((1, 1, 1, 1), -7.0), 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), (1, 1)
        )
        assert y.item() == -7.0 and argmax.item() == 4


def test_max_pool_ceil_mode_window_past_the_padding_is_cut(kernels):
    # H = 5, k = 2, s = 2, no pad, ceil mode: 3 windows, the last holds row 4 only
    x = np.arange(25.0).reshape(1, 5, 5, 1)  # NHWC
    with _cuda_check.cpu_backend(kernels) as cb:
        y, argmax = cb.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), (3, 3), "NHWC")
        dx = cb.maxpool2d_backward(
            np.ones_like(y), argmax, x.shape, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), "NHWC"
        )
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    assert dx.sum() == 9 and dx[0, 4, 4, 0] == 1


def test_max_pool_backward_refuses_an_argmax_outside_the_window(kernels):
    x = np.ones((1, 2, 4, 4))
    with _cuda_check.cpu_backend(kernels) as cb:
        y, argmax = cb.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), (2, 2))
        argmax[0, 1, 1, 0] = 4
        with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
            cb.maxpool2d_backward(y, argmax, x.shape, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1))
        with pytest.raises(ValueError, match="one shape"):
            cb.maxpool2d_backward(y, argmax[:, :1], x.shape, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1))


# ---------------------------------------------------------------------------------------------------
# Determinism, index types, inputs
# ---------------------------------------------------------------------------------------------------


def _everything(cb, dtype, rng, layout="NCHW"):
    """Every op once on fixed shapes, grouped and depthwise: a flat list of outputs."""
    xs = (2, 6, 11, 9)
    x = _to_layout(rng.standard_normal(xs).astype(dtype), layout)
    geometry = ((1, 2), (1, 2, 0, 1), (2, 1))
    outs = []
    for ws, groups in (((4, 3, 3, 2), 2), ((12, 1, 3, 3), 6), ((5, 6, 2, 2), 1)):
        W = rng.standard_normal(ws).astype(dtype)
        y = cb.conv2d_forward(x, W, None, *geometry, groups, layout)
        dout = rng.standard_normal(y.shape).astype(dtype)
        outs += [y, *cb.conv2d_backward(dout, x, W, *geometry, groups, layout)]
        outs.append(cb.conv2d_backward_data(dout, W, x.shape, *geometry, groups, layout))
    y, arg = cb.maxpool2d_forward(x, 3, 3, (2, 2), (1, 1, 1, 0), (1, 1), (6, 4), layout)
    outs += [y, arg, cb.maxpool2d_backward(y, arg, x.shape, 3, 3, (2, 2), (1, 1, 1, 0), (1, 1), layout)]
    a = cb.avgpool2d_forward(x, 3, 2, (2, 2), (1, 0, 1, 1), (6, 5), False, layout)
    outs += [a, cb.avgpool2d_backward(a, x.shape, 3, 2, (2, 2), (1, 0, 1, 1), False, layout)]
    if layout == "NCHW":
        col = cb.im2col(x, 3, 2, *geometry)
        outs += [col, cb.col2im(col, x.shape, 3, 2, *geometry)]
    return outs


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_is_bitwise_deterministic_and_index_types_agree(kernels, dtype, layout):
    runs = []
    for index in (None, None, "int64"):
        with _cuda_check.cpu_backend(kernels, index) as cb:
            runs.append(_everything(cb, dtype, np.random.default_rng(7), layout))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_ops_leave_their_inputs_unchanged(kernels, rng):
    x = rng.standard_normal((2, 6, 11, 9))
    x0 = x.copy()
    with _cuda_check.cpu_backend(kernels) as cb:
        _everything(cb, "float64", np.random.default_rng(3))
        # _everything draws its own arrays; check ours through one call of each kind
        W = rng.standard_normal((12, 1, 3, 3))
        W0 = W.copy()
        y = cb.conv2d_forward(x, W, None, (1, 1), (1, 1, 1, 1), (1, 1), 6, "NCHW")
        y0 = y.copy()
        cb.conv2d_backward(y, x, W, (1, 1), (1, 1, 1, 1), (1, 1), 6, "NCHW")
        cb.conv2d_backward_data(y, W, x.shape, (1, 1), (1, 1, 1, 1), (1, 1), 6, "NCHW")
        p, arg = cb.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), (5, 4))
        p0, arg0 = p.copy(), arg.copy()
        cb.maxpool2d_backward(p, arg, x.shape, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1))
        cb.avgpool2d_backward(p, x.shape, 2, 2, (2, 2), (0, 0, 0, 0), True)
    for a, b in ((x, x0), (W, W0), (y, y0), (p, p0), (arg, arg0)):
        np.testing.assert_array_equal(a, b)


def test_cpu_backend_restores_the_gpu_runtime():
    from fastconv.backends.cupy import runtime as rt

    before = (rt.cupy, rt.launch, rt.require)
    with pytest.raises(RuntimeError), _cuda_check.cpu_backend():
        raise RuntimeError("inside")
    assert (rt.cupy, rt.launch, rt.require) == before
