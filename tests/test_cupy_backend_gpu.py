"""The cupy backend on a real CUDA device: contract v2 against torch in float64, transfers, errors.

Tests that need a device carry the ``gpu`` marker and skip cleanly where CuPy or a device is missing;
the backend-parametrised suite (test_kernels.py and friends) also runs on cupy on such a machine.
Run them on a GPU machine with ``pytest -m gpu`` (or ``nox -s gpu``, which then times the cupy backend
against PyTorch's cuDNN with ``fastconv bench``). They call the backend's ops directly with the v2
arguments (pad (top, bottom, left, right), groups, layout, out_hw); the oracle is torch on the host in
float64 (``fastconv.testing.reference`` where torch cannot express a padding, and for the argmax rule).
The tests without the marker check the behaviour on machines without a GPU (CuPy installed or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv.backends.cupy import kernels as _cu
from fastconv.testing import reference as ref

gpu = pytest.mark.gpu

DTYPES = (np.float32, np.float64)
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-4}, np.float64: {"rtol": 1e-11, "atol": 1e-11}}
LAYOUTS = ("NCHW", "NHWC")
# (x shape NCHW, W shape, stride, pad (top, bottom, left, right), dilation, groups)
CONV = [
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((3, 4, 11, 13), (6, 2, 3, 2), (2, 1), (1, 2, 0, 1), (1, 2), 2),  # grouped, asymmetric pad
    ((2, 6, 10, 10), (6, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),  # depthwise
    ((2, 4, 12, 9), (12, 1, 3, 2), (2, 2), (2, 0, 1, 1), (2, 1), 4),  # depthwise, multiplier 3
    ((2, 1, 8, 8), (5, 1, 3, 3), (1, 1), (0, 1, 1, 0), (1, 1), 1),  # one input channel: direct path
    ((8, 16, 14, 14), (32, 16, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((4, 32, 14, 14), (64, 8, 3, 3), (2, 2), (0, 1, 0, 1), (1, 1), 4),
]
# (x shape NCHW, kh, kw, stride, pad, dilation, ceil_mode)
POOL = [
    ((2, 3, 8, 8), 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), False),
    ((2, 3, 9, 9), 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), True),
    ((2, 2, 9, 11), 2, 3, (1, 2), (1, 0, 1, 1), (2, 1), False),
    ((2, 5, 10, 7), 3, 2, (2, 2), (1, 0, 0, 1), (1, 1), True),
]


@pytest.fixture(scope="module")
def cb():
    """The cupy backend module, usable; skip (not fail) without CuPy or a device."""
    pytest.importorskip("cupy")
    from fastconv.backends import cupy as cupy_backend

    reason = cupy_backend.probe()
    if reason is not None:
        pytest.skip(f"cupy backend unavailable: {reason}")
    return cupy_backend


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _out_hw(hw, kh, kw, stride, pad, dilation, ceil_mode=False):
    return (
        ref.pool_out_size(hw[0], kh, stride[0], pad[0], dilation[0], ceil_mode, pad[1]),
        ref.pool_out_size(hw[1], kw, stride[1], pad[2], dilation[1], ceil_mode, pad[3]),
    )


def _torch_conv(x, W, b, stride, pad, dilation, groups, dout):
    """float64 y, dx, dW, db (NCHW) by torch autograd; asymmetric pads through F.pad."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    Wt = torch.from_numpy(W.astype(np.float64)).requires_grad_(True)
    top, bottom, left, right = pad
    y = F.conv2d(F.pad(xt, (left, right, top, bottom)), Wt, None, stride, 0, dilation, groups)
    y.backward(torch.from_numpy(dout.astype(np.float64)))
    y = y.detach().numpy() + (0 if b is None else b.astype(np.float64).reshape(1, -1, 1, 1))
    return y, xt.grad.numpy(), Wt.grad.numpy(), dout.astype(np.float64).sum(axis=(0, 2, 3))


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad, dilation, groups", CONV)
def test_cupy_conv_matches_torch_with_groups_depthwise_and_layouts(
    cb, rng, dtype, layout, xs, ws, stride, pad, dilation, groups
):
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    oh, ow = _out_hw(xs[2:], ws[2], ws[3], stride, pad, dilation)
    dout = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    y_ref, dx_ref, dW_ref, db_ref = _torch_conv(x, W, b, stride, pad, dilation, groups, dout)
    dev, host = cb.to_device, cb.to_host
    xd, Wd, dd = dev(_layout(x, layout)), dev(W), dev(_layout(dout, layout))
    args = (stride, pad, dilation, groups, layout)
    y = cb.conv2d_forward(xd, Wd, dev(b), *args)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(_nchw(host(y), layout), y_ref, **TOL[dtype])
    y0 = cb.conv2d_forward(xd, Wd, None, *args)
    np.testing.assert_allclose(_nchw(host(y0), layout), y_ref - b.reshape(1, -1, 1, 1), **TOL[dtype])
    dx, dW, db = cb.conv2d_backward(dd, xd, Wd, *args)
    for got, want in ((_nchw(host(dx), layout), dx_ref), (host(dW), dW_ref), (host(db), db_ref)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])
    none, dW2, _ = cb.conv2d_backward(dd, xd, Wd, *args, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(host(dW2), host(dW))
    dx_only = cb.conv2d_backward_data(dd, Wd, xd.shape, *args)
    np.testing.assert_array_equal(host(dx_only), host(dx))


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cupy_grouped_conv_in_chunks_of_groups_equals_one_batched_gemm(cb, rng, layout, monkeypatch):
    from fastconv.backends.cupy import ops

    xs, ws, stride, pad, dilation, groups = CONV[-1]
    x, W = cb.to_device(_layout(rng.standard_normal(xs), layout)), cb.to_device(rng.standard_normal(ws))
    args = (stride, pad, dilation, groups, layout)
    y = cb.conv2d_forward(x, W, None, *args)
    dout = cb.to_device(rng.standard_normal(y.shape))
    whole = [y, *cb.conv2d_backward(dout, x, W, *args)]
    monkeypatch.setattr(ops, "COL_BUDGET_BYTES", 1)  # one group per chunk
    chunked = [cb.conv2d_forward(x, W, None, *args), *cb.conv2d_backward(dout, x, W, *args)]
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(cb.to_host(a), cb.to_host(b), rtol=1e-12, atol=1e-12)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad, dilation, groups", CONV[:2])
def test_cupy_im2col_and_col2im_match_torch_unfold_and_fold(
    cb, rng, dtype, xs, ws, stride, pad, dilation, groups
):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal(xs).astype(dtype)
    kh, kw = ws[2:]
    top, bottom, left, right = pad
    xp = F.pad(torch.from_numpy(x.astype(np.float64)), (left, right, top, bottom))
    u = F.unfold(xp, (kh, kw), dilation=dilation, stride=stride)
    want = u.transpose(1, 2).reshape(-1, u.shape[1]).numpy().astype(dtype)
    col = cb.im2col(cb.to_device(x), kh, kw, stride, pad, dilation)
    np.testing.assert_array_equal(cb.to_host(col), want)
    c = rng.standard_normal(col.shape).astype(dtype)
    folded = F.fold(
        torch.from_numpy(c.astype(np.float64)).reshape(xs[0], -1, c.shape[1]).transpose(1, 2),
        xp.shape[2:],
        (kh, kw),
        dilation=dilation,
        stride=stride,
    )[:, :, top : top + xs[2], left : left + xs[3]]
    dx = cb.col2im(cb.to_device(c), xs, kh, kw, stride, pad, dilation)
    np.testing.assert_allclose(cb.to_host(dx), folded.numpy(), **TOL[dtype])


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, kh, kw, stride, pad, dilation, ceil_mode", POOL)
def test_cupy_max_pool_matches_the_reference_with_ties_nan_and_ceil_mode(
    cb, rng, dtype, layout, xs, kh, kw, stride, pad, dilation, ceil_mode
):
    x = rng.integers(-2, 3, size=xs).astype(dtype)  # ties everywhere
    x.flat[::7] = np.nan
    out_hw = _out_hw(xs[2:], kh, kw, stride, pad, dilation, ceil_mode)
    y, argmax = cb.maxpool2d_forward(
        cb.to_device(_layout(x, layout)), kh, kw, stride, pad, dilation, out_hw, layout
    )
    y_ref, arg_ref = ref.max_pool2d(x, (kh, kw), stride, pad, dilation, out_hw)
    np.testing.assert_array_equal(_nchw(cb.to_host(y), layout), y_ref.astype(dtype))
    np.testing.assert_array_equal(_nchw(cb.to_host(argmax), layout), arg_ref)
    assert argmax.dtype == np.int32
    dout = rng.standard_normal((xs[0], xs[1], *out_hw)).astype(dtype)
    dx = cb.maxpool2d_backward(
        cb.to_device(_layout(dout, layout)),
        argmax,
        _layout(x, layout).shape,
        kh,
        kw,
        stride,
        pad,
        dilation,
        layout,
    )
    want = ref.max_pool2d_backward(dout, arg_ref, xs, (kh, kw), stride, pad, dilation)
    np.testing.assert_allclose(_nchw(cb.to_host(dx), layout), want, **TOL[dtype])


@gpu
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, kh, kw, stride, pad, dilation, ceil_mode", POOL)
def test_cupy_avg_pool_matches_torch_divisor_rule(
    cb, rng, dtype, layout, count_include_pad, xs, kh, kw, stride, pad, dilation, ceil_mode
):
    torch = pytest.importorskip("torch")
    if dilation != (1, 1):
        pytest.skip("average pooling has no dilation")
    x = rng.standard_normal(xs).astype(dtype)
    out_hw = _out_hw(xs[2:], kh, kw, stride, pad, (1, 1), ceil_mode)
    dout = rng.standard_normal((xs[0], xs[1], *out_hw)).astype(dtype)
    if pad[0] == pad[1] and pad[2] == pad[3]:
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        yt = torch.nn.functional.avg_pool2d(
            xt, (kh, kw), stride, (pad[0], pad[2]), ceil_mode, count_include_pad
        )
        yt.backward(torch.from_numpy(dout.astype(np.float64)))
        y_ref, dx_ref = yt.detach().numpy(), xt.grad.numpy()
    else:
        y_ref = ref.avg_pool2d(x, (kh, kw), stride, pad, out_hw, count_include_pad)
        dx_ref = ref.avg_pool2d_backward(dout, xs, (kh, kw), stride, pad, count_include_pad)
    xl = _layout(x, layout)
    y = cb.avgpool2d_forward(cb.to_device(xl), kh, kw, stride, pad, out_hw, count_include_pad, layout)
    np.testing.assert_allclose(_nchw(cb.to_host(y), layout), y_ref, **TOL[dtype])
    dx = cb.avgpool2d_backward(
        cb.to_device(_layout(dout, layout)), xl.shape, kh, kw, stride, pad, count_include_pad, layout
    )
    np.testing.assert_allclose(_nchw(cb.to_host(dx), layout), dx_ref, **TOL[dtype])


def _every_op(cb, x, rng, layout):
    """Every op once on x (grouped, depthwise and plain convolutions, both pools): their outputs."""
    outs = []
    dev = cb.to_device
    for ws, groups in (((4, 3, 3, 2), 2), ((12, 1, 3, 3), 6), ((5, 6, 2, 2), 1)):
        W = dev(rng.standard_normal(ws))
        args = ((1, 2), (1, 2, 0, 1), (2, 1), groups, layout)
        y = cb.conv2d_forward(x, W, None, *args)
        dout = dev(rng.standard_normal(y.shape))
        outs += [y, *cb.conv2d_backward(dout, x, W, *args), cb.conv2d_backward_data(dout, W, x.shape, *args)]
    y, arg = cb.maxpool2d_forward(x, 3, 3, (2, 2), (1, 1, 1, 0), (1, 1), (6, 4), layout)
    outs += [y, arg, cb.maxpool2d_backward(y, arg, x.shape, 3, 3, (2, 2), (1, 1, 1, 0), (1, 1), layout)]
    a = cb.avgpool2d_forward(x, 3, 2, (2, 2), (1, 0, 1, 1), (6, 5), False, layout)
    outs += [a, cb.avgpool2d_backward(a, x.shape, 3, 2, (2, 2), (1, 0, 1, 1), False, layout)]
    return [cb.to_host(o) for o in outs]


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cupy_every_op_is_bitwise_deterministic(cb, layout):
    x = cb.to_device(_layout(np.random.default_rng(1).standard_normal((2, 6, 11, 9)), layout))
    one, two = (_every_op(cb, x, np.random.default_rng(2), layout) for _ in range(2))
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_64_bit_index_kernels_agree_with_32_bit(cb, rng, dtype):
    import cupy

    from fastconv.backends.cupy import runtime

    xs, kh, kw, stride, pad, dilation = (2, 3, 12, 10), 3, 2, (2, 1), (1, 0, 1, 2), (1, 2)
    x = cupy.asarray(rng.standard_normal(xs).astype(dtype))
    out_hw = _out_hw(xs[2:], kh, kw, stride, pad, dilation)
    cases = (
        ("fc_im2col", _cu.im2col_args(xs, kh, kw, stride, pad, dilation, k_major=True), ()),
        (
            "fc_maxpool_fwd",
            _cu.maxpool_fwd_args(xs, kh, kw, stride, pad, dilation, out_hw, "NCHW"),
            (np.int32,),
        ),
        ("fc_avgpool_fwd", _cu.avgpool_fwd_args(xs, kh, kw, stride, pad, out_hw, True, "NCHW"), ()),
    )
    for kernel, launch, extra in cases:
        outs = []
        for index in _cu.INDEX_TYPES:
            bufs = (cupy.full(launch.out_shape, np.nan, dtype=dtype),)
            bufs += tuple(cupy.full(launch.out_shape, -7, dtype=t) for t in extra)
            runtime.launch(kernel, x.dtype, dataclasses.replace(launch, index=index), (x, *bufs))
            outs.append([cupy.asnumpy(b) for b in bufs])
        for a, b in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, b)


@gpu
@pytest.mark.parametrize("dtype", [*DTYPES, np.float16, np.int32])
def test_host_device_round_trip_preserves_values_shape_and_dtype(cb, rng, dtype):
    import cupy

    a = (rng.standard_normal((3, 4, 5)) * 10).astype(dtype)
    d = fastconv.to_device(a, backend="cupy")
    assert isinstance(d, cupy.ndarray) and cb.owns(d) and not cb.owns(a)
    back = fastconv.to_host(d)
    assert isinstance(back, np.ndarray) and back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@gpu
def test_numpy_array_given_to_the_cupy_backend_raises_type_error_naming_to_device(cb, rng):
    x = rng.standard_normal((1, 1, 4, 4))
    W = rng.standard_normal((1, 1, 2, 2))
    with pytest.raises(TypeError, match="fastconv.to_device"):
        cb.conv2d_forward(x, cb.to_device(W), None, (1, 1), (0, 0, 0, 0), (1, 1), 1, "NCHW")
    with pytest.raises(TypeError, match="fastconv.to_device"):
        cb.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), (2, 2), "NCHW")
    with pytest.raises(TypeError, match="fastconv.to_device"):
        cb.avgpool2d_forward(x, 2, 2, (2, 2), (0, 0, 0, 0), (2, 2), True, "NCHW")


@gpu
def test_cupy_backend_works_through_the_functional_api_and_auto_dispatch(cb, rng):
    import cupy

    x, W = rng.standard_normal((2, 4, 8, 8)), rng.standard_normal((4, 2, 3, 3))
    y = fastconv.conv2d(cb.to_device(x), cb.to_device(W), pad=1, groups=2)  # auto: cupy array -> cupy
    assert isinstance(y, cupy.ndarray) and fastconv.get_backend(y) == "cupy"
    np.testing.assert_allclose(cb.to_host(y), ref.conv2d(x, W, None, (1, 1), (1, 1), (1, 1), 2), rtol=1e-12)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    p = fastconv.avg_pool2d(cb.to_device(x_nhwc), 3, stride=2, pad=1, ceil_mode=True, layout="NHWC")
    want = ref.avg_pool2d(
        x_nhwc, (3, 3), (2, 2), (1, 1), _out_hw((8, 8), 3, 3, (2, 2), (1,) * 4, (1, 1), True), True, "NHWC"
    )
    np.testing.assert_allclose(cb.to_host(p), want, rtol=1e-12)


@gpu
def test_kernels_run_on_the_current_cupy_stream(cb, rng):
    import cupy

    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    W = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    geometry = (2, 2, (2, 2), (0, 0, 0, 0), (1, 1))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        xd = cupy.asarray(x)
        y, argmax = cb.maxpool2d_forward(xd, *geometry, (8, 8), "NCHW")
        dx = cb.maxpool2d_backward(y, argmax, x.shape, *geometry, "NCHW")
        yc = cb.conv2d_forward(xd, cupy.asarray(W), None, (1, 1), (1, 1, 1, 1), (1, 1), 8, "NCHW")
    stream.synchronize()
    y_ref, arg_ref = ref.max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1))
    np.testing.assert_array_equal(cupy.asnumpy(y), y_ref.astype(np.float32))
    np.testing.assert_allclose(
        cupy.asnumpy(dx), ref.max_pool2d_backward(y_ref, arg_ref, x.shape, (2, 2), (2, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(
        cupy.asnumpy(yc), ref.conv2d(x, W, None, (1, 1), (1, 1), (1, 1), 8), rtol=1e-4, atol=1e-4
    )


@gpu
def test_info_names_cupy_cuda_and_the_device(cb):
    info = cb.info()
    assert info["cupy"] and info["cuda_runtime"] and info["devices"].startswith("0: ")


@gpu
@pytest.mark.slow
def test_cupy_max_pool_is_correct_beyond_two_to_the_31_elements(cb):
    # one plane of 46342**2 > 2**31 elements: offsets h*W + w overflow int32, so the kernels must take
    # the 64-bit index instantiation; checked on sampled rows (about 22 GB of GPU memory)
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory, has {free / 2**30:.1f}")
    shape, geometry = (1, 1, 46342, 46342), (2, 2, (2, 2), (0, 0, 0, 0), (1, 1))
    out_hw = (23171, 23171)
    assert _cu.maxpool_fwd_args(shape, *geometry, out_hw, "NCHW").index == "int64"
    x = cupy.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y, argmax = cb.maxpool2d_forward(x, *geometry, out_hw, "NCHW")
    dx = cb.maxpool2d_backward(y, argmax, shape, *geometry, "NCHW")
    for r in (0, 17000, 23170):
        rows = cupy.asnumpy(x[:, :, 2 * r : 2 * r + 2])
        y_ref, arg_ref = ref.max_pool2d(rows, (2, 2), (2, 2), (0, 0), (1, 1))
        np.testing.assert_array_equal(cupy.asnumpy(y[:, :, r : r + 1]), y_ref.astype(np.float32))
        np.testing.assert_array_equal(cupy.asnumpy(argmax[:, :, r : r + 1]), arg_ref)
        dx_ref = ref.max_pool2d_backward(y_ref, arg_ref, rows.shape, (2, 2), (2, 2))
        np.testing.assert_array_equal(cupy.asnumpy(dx[:, :, 2 * r : 2 * r + 2]), dx_ref.astype(np.float32))


def test_the_cupy_backend_package_loads_without_cupy_and_says_why_it_is_unusable():
    """The kernel table must load on machines without CuPy (the CI checks compile its sources)."""
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import fastconv.backends.cupy as cb\n"
        "from fastconv.backends.cupy import kernels\n"
        "print(cb.xp is None, len(kernels.KERNELS) > 0)\n"
        "print(cb.probe())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, reason = done.stdout.splitlines()
    assert first == "True True"
    assert "CuPy is not installed" in reason and "pip install 'fastconv[cuda12]'" in reason


def test_selecting_cupy_without_a_usable_device_raises_a_one_line_actionable_error():
    """Run with no visible device (CUDA_VISIBLE_DEVICES="", in a fresh process), so GPU machines check it too."""
    code = (
        "import json, numpy as np, fastconv\n"
        "from fastconv.backends import cupy as cupy_backend\n"
        "reason = cupy_backend.probe()\n"
        "status = fastconv.list_backends()['cupy']\n"
        "try:\n"
        "    fastconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), backend='cupy')\n"
        "    error = None\n"
        "except fastconv.BackendUnavailableError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps({'reason': reason, 'status': status, 'error': error}))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    reason = out["reason"]
    assert reason is not None
    assert "\n" not in reason and (
        "pip install" in reason or "numba or numpy" in reason or "driver" in reason
    )
    assert out["status"] == {"available": False, "reason": reason}
    assert out["error"] is not None
    assert "\n" not in out["error"] and reason in out["error"]
