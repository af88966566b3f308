"""The cupy backend: parity with the NumPy backend on a real CUDA device, transfers, errors.

Tests that need a device carry the ``gpu`` marker and skip cleanly where CuPy or a device is missing;
the backend-parametrised suite (test_kernels.py and friends) also runs on cupy on such a machine.
Run them on a GPU machine with ``pytest -m gpu`` (or ``nox -s gpu``, which then times the cupy backend
against PyTorch's cuDNN with ``fastconv bench``). The tests without the marker check the behaviour on
machines without a GPU (CuPy installed or not).
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
from fastconv.backends import numpy as ref
from fastconv.backends.cupy import kernels as _cu

gpu = pytest.mark.gpu

DTYPES = (np.float32, np.float64)
TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}
# (x shape, W shape, stride, pad, dilation), as pairs
CONV = [
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1)),
    ((3, 4, 11, 13), (5, 4, 3, 2), (2, 1), (1, 2), (1, 2)),
    ((2, 2, 10, 10), (3, 2, 3, 3), (3, 2), (2, 1), (2, 2)),
    ((8, 16, 14, 14), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1)),
]
POOL = [
    ((2, 3, 8, 8), 2, 2, (2, 2), (0, 0), (1, 1)),
    ((2, 3, 9, 9), 3, 3, (2, 2), (1, 1), (1, 1)),
    ((2, 2, 9, 11), 2, 3, (1, 2), (1, 1), (2, 1)),
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


def _close(dtype):
    return TOL[dtype]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad, dilation", CONV)
def test_cupy_conv_matches_numpy_backend(cb, rng, dtype, xs, ws, stride, pad, dilation):
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    dev = cb.to_device
    y = cb.conv2d_forward(dev(x), dev(W), dev(b), stride, pad, dilation)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(
        cb.to_host(y), ref.conv2d_forward(x, W, b, stride, pad, dilation), **_close(dtype)
    )
    y0 = cb.conv2d_forward(dev(x), dev(W), None, stride, pad, dilation)
    np.testing.assert_allclose(
        cb.to_host(y0), ref.conv2d_forward(x, W, None, stride, pad, dilation), **_close(dtype)
    )
    dout = rng.standard_normal(y.shape).astype(dtype)
    got = cb.conv2d_backward(dev(dout), dev(x), dev(W), stride, pad, dilation)
    want = ref.conv2d_backward(dout, x, W, stride, pad, dilation)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(cb.to_host(g), w, **_close(dtype))
    dx, dW, db = cb.conv2d_backward(dev(dout), dev(x), dev(W), stride, pad, dilation, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(cb.to_host(dW), want[1], **_close(dtype))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad, dilation", CONV)
def test_cupy_im2col_and_col2im_match_numpy_backend(cb, rng, dtype, xs, ws, stride, pad, dilation):
    x = rng.standard_normal(xs).astype(dtype)
    kh, kw = ws[2:]
    col = cb.im2col(cb.to_device(x), kh, kw, stride, pad, dilation)
    np.testing.assert_array_equal(cb.to_host(col), ref.im2col(x, kh, kw, stride, pad, dilation))
    c = rng.standard_normal(col.shape).astype(dtype)
    dx = cb.col2im(cb.to_device(c), xs, kh, kw, stride, pad, dilation)
    np.testing.assert_allclose(
        cb.to_host(dx), ref.col2im(c, xs, kh, kw, stride, pad, dilation), **_close(dtype)
    )


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, kh, kw, stride, pad, dilation", POOL)
def test_cupy_max_pool_matches_numpy_backend_with_ties_and_nan(
    cb, rng, dtype, xs, kh, kw, stride, pad, dilation
):
    x = rng.integers(-2, 3, size=xs).astype(dtype)  # ties everywhere
    x.flat[::7] = np.nan
    y, argmax = cb.maxpool2d_forward(cb.to_device(x), kh, kw, stride, pad, dilation)
    y_ref, arg_ref = ref.maxpool2d_forward(x, kh, kw, stride, pad, dilation)
    np.testing.assert_array_equal(cb.to_host(y), y_ref)
    np.testing.assert_array_equal(cb.to_host(argmax), arg_ref)
    assert argmax.dtype == np.int32
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = cb.maxpool2d_backward(cb.to_device(dout), argmax, xs, kh, kw, stride, pad, dilation)
    want = ref.maxpool2d_backward(dout, arg_ref, xs, kh, kw, stride, pad, dilation)
    np.testing.assert_allclose(cb.to_host(dx), want, **_close(dtype))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_64_bit_index_kernels_agree_with_32_bit(cb, rng, dtype):
    import cupy

    xs, kh, kw, stride, pad, dilation = (2, 3, 12, 10), 3, 2, (2, 1), (1, 1), (1, 2)
    x = cupy.asarray(rng.standard_normal(xs).astype(dtype))
    for kernel, make in (("fc_im2col", _cu.im2col_args), ("fc_maxpool_fwd", _cu.maxpool_fwd_args)):
        extra = {"k_major": True} if kernel == "fc_im2col" else {}
        launch = make(xs, kh, kw, stride, pad, dilation, **extra)
        outs = []
        for index in _cu.INDEX_TYPES:
            bufs = (cupy.empty(launch.out_shape, dtype=dtype),)
            if kernel == "fc_maxpool_fwd":
                bufs += (cupy.empty(launch.out_shape, dtype=np.int32),)
            cb._launch(kernel, x.dtype, dataclasses.replace(launch, index=index), (x, *bufs))
            outs.append([cupy.asnumpy(b) for b in bufs])
        for a, b in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, b)


@gpu
def test_cupy_gathers_are_bitwise_deterministic(cb, rng):
    xs, ws, stride, pad, dilation = CONV[1]
    x, W = cb.to_device(rng.standard_normal(xs)), cb.to_device(rng.standard_normal(ws))
    dout = cb.to_device(rng.standard_normal(cb.conv2d_forward(x, W, None, stride, pad, dilation).shape))
    runs = [cb.conv2d_backward(dout, x, W, stride, pad, dilation) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert cb.to_host(a).tobytes() == cb.to_host(b).tobytes()
    y, argmax = cb.maxpool2d_forward(x, 3, 3, (2, 2), (1, 1), (1, 1))
    d = cb.to_device(rng.standard_normal(y.shape))
    one, two = (cb.maxpool2d_backward(d, argmax, xs, 3, 3, (2, 2), (1, 1), (1, 1)) for _ in range(2))
    assert cb.to_host(one).tobytes() == cb.to_host(two).tobytes()


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
        fastconv.conv2d(x, W, backend="cupy")
    with pytest.raises(TypeError, match="fastconv.to_device"):
        cb.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="fastconv.to_device"):
        fastconv.max_pool2d(cb.to_device(x), 2, backend="numpy")


@gpu
def test_cupy_backend_works_through_the_functional_api_and_auto_dispatch(cb, rng):
    import cupy

    x, W = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    y = fastconv.conv2d(cb.to_device(x), cb.to_device(W), pad=1)  # auto: a cupy array selects cupy
    assert isinstance(y, cupy.ndarray)
    np.testing.assert_allclose(
        cb.to_host(y), ref.conv2d_forward(x, W, None, (1, 1), (1, 1), (1, 1)), rtol=1e-12
    )
    assert fastconv.get_backend(y) == "cupy"


@gpu
def test_kernels_run_on_the_current_cupy_stream(cb, rng):
    import cupy

    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        xd = cupy.asarray(x)
        y, argmax = cb.maxpool2d_forward(xd, 2, 2, (2, 2), (0, 0), (1, 1))
        dx = cb.maxpool2d_backward(y, argmax, x.shape, 2, 2, (2, 2), (0, 0), (1, 1))
    stream.synchronize()
    y_ref, arg_ref = ref.maxpool2d_forward(x, 2, 2, (2, 2), (0, 0), (1, 1))
    np.testing.assert_array_equal(cupy.asnumpy(y), y_ref)
    np.testing.assert_array_equal(
        cupy.asnumpy(dx), ref.maxpool2d_backward(y_ref, arg_ref, x.shape, 2, 2, (2, 2), (0, 0), (1, 1))
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
    shape, geometry = (1, 1, 46342, 46342), (2, 2, (2, 2), (0, 0), (1, 1))
    assert _cu.maxpool_fwd_args(shape, *geometry).index == "int64"
    x = cupy.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y, argmax = cb.maxpool2d_forward(x, *geometry)
    dx = cb.maxpool2d_backward(y, argmax, shape, *geometry)
    for r in (0, 17000, 23170):
        rows = cupy.asnumpy(x[:, :, 2 * r : 2 * r + 2])
        y_ref, arg_ref = ref.maxpool2d_forward(rows, *geometry)
        np.testing.assert_array_equal(cupy.asnumpy(y[:, :, r : r + 1]), y_ref)
        np.testing.assert_array_equal(cupy.asnumpy(argmax[:, :, r : r + 1]), arg_ref)
        dx_ref = ref.maxpool2d_backward(y_ref, arg_ref, rows.shape, *geometry)
        np.testing.assert_array_equal(cupy.asnumpy(dx[:, :, 2 * r : 2 * r + 2]), dx_ref)


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
