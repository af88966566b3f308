"""Backend selection: environment, set_backend, use_backend, per-layer and per-call overrides, plug-ins."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import fastconv
from fastconv import _registry
from fastconv._shapes import as_pad4, conv_output_size
from fastconv.backends import numpy as numpy_backend
from fastconv.layers import Convolution, Pooling, Relu


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "FASTCONV_BACKEND"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


KERNELS_V1 = (
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
)


def _v1_kernels(calls: list) -> dict:
    """The six version-1 kernels (symmetric (h, w) pad pairs, no groups/layout/out_hw), written over
    the NumPy backend's version-2 ones; each records (kernel, pad) and refuses anything but a pair."""

    def pair_pad(kernel, pad):
        assert len(pad) == 2 and all(isinstance(p, int) for p in pad), (kernel, pad)  # a v1 call
        calls.append((kernel, tuple(pad)))
        return as_pad4(pad)

    def im2col(x, kh, kw, stride, pad, dilation):
        return numpy_backend.im2col(x, kh, kw, stride, pair_pad("im2col", pad), dilation)

    def col2im(col, x_shape, kh, kw, stride, pad, dilation):
        return numpy_backend.col2im(col, x_shape, kh, kw, stride, pair_pad("col2im", pad), dilation)

    def conv2d_forward(x, W, b, stride, pad, dilation):
        p4 = pair_pad("conv2d_forward", pad)
        return numpy_backend.conv2d_forward(x, W, b, stride, p4, dilation, 1, "NCHW")

    def conv2d_backward(dout, x, W, stride, pad, dilation, need_dx=True):
        p4 = pair_pad("conv2d_backward", pad)
        return numpy_backend.conv2d_backward(dout, x, W, stride, p4, dilation, 1, "NCHW", need_dx)

    def maxpool2d_forward(x, kh, kw, stride, pad, dilation):
        p4 = pair_pad("maxpool2d_forward", pad)
        out_hw = conv_output_size(x.shape[2:], (kh, kw), stride, p4, dilation)  # v1: floor mode only
        return numpy_backend.maxpool2d_forward(x, kh, kw, stride, p4, dilation, out_hw, "NCHW")

    def maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad, dilation):
        p4 = pair_pad("maxpool2d_backward", pad)
        return numpy_backend.maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, p4, dilation, "NCHW")

    return {k: v for k, v in locals().items() if k in KERNELS_V1}


def make_recording_backend(name: str, calls: list, contract: int | None = 2) -> types.SimpleNamespace:
    """A tiny third-party backend: NumPy kernels that record each call.

    ``contract=2``: the NumPy backend's version-2 kernels, passed the calls as they come (``calls``
    gets each kernel's name). ``contract=1`` or ``None`` (no contract attribute): a version-1 backend,
    :func:`_v1_kernels` (``calls`` gets (kernel, pad) pairs).
    """

    def recorded(kernel):
        def wrapper(*args, **kwargs):
            calls.append(kernel)
            return getattr(numpy_backend, kernel)(*args, **kwargs)

        return wrapper

    if contract == 2:
        kernels = {k: recorded(k) for k in KERNELS_V1}
    else:
        kernels = _v1_kernels(calls)
    backend = types.SimpleNamespace(
        name=name,
        xp=np,
        owns=lambda a: isinstance(a, np.ndarray),
        to_device=np.asarray,
        to_host=np.asarray,
        **kernels,
    )
    if contract is not None:
        backend.contract = contract
    return backend


@pytest.fixture
def recorder():
    calls: list[str] = []
    fastconv.register_backend("recorder", make_recording_backend("recorder", calls))
    yield calls
    fastconv.unregister_backend("recorder")


def test_import_fastconv_imports_neither_numba_nor_cupy():
    out = run_python("import sys, fastconv; print('numba' in sys.modules, 'cupy' in sys.modules)")
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_bad_environment_value_cannot_break_import_but_fails_at_first_use():
    out = run_python(
        "import fastconv, numpy as np\n"
        "try:\n    fastconv.conv2d(np.ones((1,1,3,3)), np.ones((1,1,2,2)))\n"
        "except ValueError as e:\n    print('ERR', e)",
        FASTCONV_BACKEND="nosuch",
    )
    assert out.returncode == 0, out.stderr
    assert "unknown backend 'nosuch' (from environment variable FASTCONV_BACKEND='nosuch')" in out.stdout
    assert "known backends: numpy, numba, cupy" in out.stdout


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "numpy")
    assert fastconv.get_backend() == "numpy"


@pytest.fixture
def missing():
    """A backend that is unavailable on every machine: its module does not exist."""
    fastconv.register_backend(
        "missing", "fastconv_no_such_module_for_tests", install_hint="pip install missing"
    )
    yield "missing"
    fastconv.unregister_backend("missing")


def test_a_comma_list_takes_the_first_available_backend(monkeypatch, recorder, missing):
    monkeypatch.setenv("FASTCONV_BACKEND", "missing,recorder,numpy")
    assert fastconv.get_backend() == "recorder"


def test_a_single_unavailable_name_is_strict_and_says_why():
    """cupy with no visible device (CUDA_VISIBLE_DEVICES="", in a fresh process: on GPU machines too)."""
    out = run_python(
        "import fastconv, numpy as np\n"
        "try:\n    fastconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))\n"
        "except fastconv.BackendUnavailableError as e:\n    print('ERR', e)",
        FASTCONV_BACKEND="cupy",
        CUDA_VISIBLE_DEVICES="",
    )
    assert out.returncode == 0, out.stderr
    assert re.search(
        r"^ERR backend 'cupy' \(from environment variable FASTCONV_BACKEND='cupy'\) is unavailable: .+",
        out.stdout,
    ), out.stdout


def test_an_unavailable_backend_is_never_silently_replaced():
    fastconv.register_backend(
        "broken", "fastconv_no_such_module_for_tests", install_hint="pip install broken"
    )
    try:
        status = fastconv.list_backends()["broken"]
        assert not status["available"] and "pip install broken" in status["reason"]
        with pytest.raises(
            fastconv.BackendUnavailableError, match=r"backend 'broken' \(from backend= on the call\)"
        ):
            fastconv.max_pool2d(np.ones((1, 1, 2, 2)), 2, backend="broken")
    finally:
        fastconv.unregister_backend("broken")


@pytest.mark.parametrize("where", ["call", "set_backend", "use_backend", "layer"])
def test_unknown_names_list_the_known_ones_and_say_where_they_came_from(where):
    x, W = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    source = {
        "call": "backend= on the call",
        "set_backend": r"set_backend\(\)",
        "use_backend": r"use_backend\(\)",
        "layer": "backend= on the layer",
    }[where]
    with pytest.raises(ValueError, match=rf"unknown backend 'nope' \(from {source}\); known backends: numpy"):
        if where == "call":
            fastconv.conv2d(x, W, backend="nope")
        elif where == "set_backend":
            fastconv.set_backend("nope")
        elif where == "use_backend":
            with fastconv.use_backend("nope"):
                pass
        else:
            Convolution(W, 0.0, backend="nope").forward(x)


def test_precedence_is_call_then_layer_then_context_then_default_then_environment(monkeypatch, recorder):
    x, W = np.random.default_rng(0).standard_normal((1, 1, 4, 4)), np.ones((1, 1, 2, 2))
    monkeypatch.setenv("FASTCONV_BACKEND", "recorder")
    assert fastconv.get_backend() == "recorder"
    fastconv.set_backend("numpy")
    assert fastconv.get_backend() == "numpy"  # set_backend beats the environment
    with fastconv.use_backend("recorder"):
        assert fastconv.get_backend() == "recorder"  # context beats set_backend
        recorder.clear()
        Convolution(W, 0.0, backend="numpy").forward(x)  # layer beats context
        assert recorder == []
        fastconv.conv2d(x, W, backend="numpy")  # call beats context
        assert recorder == []
        fastconv.conv2d(x, W)
        assert recorder == ["conv2d_forward"]
    assert fastconv.get_backend() == "numpy"


def test_use_backend_is_local_to_each_thread():
    seen = {}
    barrier = threading.Barrier(2)

    def worker(name):
        with fastconv.use_backend(name):
            barrier.wait()  # both threads are inside their own context now
            seen[name] = fastconv.get_backend()

    fastconv.register_backend("other", make_recording_backend("other", []))
    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("numpy", "other")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fastconv.unregister_backend("other")
    assert seen == {"numpy": "numpy", "other": "other"}


def test_use_backend_is_local_to_each_asyncio_task(recorder):
    async def task(name, results):
        with fastconv.use_backend(name):
            await asyncio.sleep(0.01)
            results[name] = fastconv.get_backend()

    async def main():
        results = {}
        await asyncio.gather(task("numpy", results), task("recorder", results))
        return results

    assert asyncio.run(main()) == {"numpy": "numpy", "recorder": "recorder"}


def test_a_registered_backend_runs_the_layers(recorder, rng):
    x = rng.standard_normal((2, 1, 8, 8))
    conv = Convolution(rng.standard_normal((3, 1, 3, 3)), np.zeros(3), backend="recorder")
    pool = Pooling(2, 2, stride=2, backend="recorder")
    relu = Relu()
    out = pool.forward(relu.forward(conv.forward(x)))
    conv.backward(relu.backward(pool.backward(np.ones_like(out))))
    assert recorder == ["conv2d_forward", "maxpool2d_forward", "maxpool2d_backward", "conv2d_backward"]
    np.testing.assert_allclose(
        out,
        Pooling(2, 2, backend="numpy").forward(
            Relu().forward(Convolution(conv.W, conv.b, backend="numpy").forward(x))
        ),
    )


@pytest.mark.parametrize("contract", [None, 1], ids=["no-contract-attribute", "contract-1"])
def test_a_version_1_backend_still_runs_through_the_functional_api_and_the_layers(contract, rng):
    """A backend written against version 1 of the contract (no ``contract = 2``) gets the version-1
    calls (symmetric (h, w) pad pairs, no groups/layout/out_hw, no algorithm keyword), gives the NumPy
    backend's results, and refuses with a clear error what those calls cannot express."""
    calls: list = []
    fastconv.register_backend("old", make_recording_backend("old", calls, contract))
    try:
        x = rng.standard_normal((2, 3, 9, 8))
        W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
        for stride, pad, dilation in ((1, 1, 1), ((2, 1), (0, 2), (1, 2)), (1, "same", 1)):
            y = fastconv.conv2d(x, W, b, stride, pad, dilation, backend="old")
            np.testing.assert_array_equal(y, fastconv.conv2d(x, W, b, stride, pad, dilation, backend="numpy"))
            dout = rng.standard_normal(y.shape)
            for need_dx in (True, False):
                got = fastconv.conv2d_backward(
                    dout, x, W, stride, pad, dilation, need_dx=need_dx, backend="old"
                )
                want = fastconv.conv2d_backward(
                    dout, x, W, stride, pad, dilation, need_dx=need_dx, backend="numpy"
                )
                assert (got[0] is None) == (not need_dx)
                for g, w in zip(got, want):
                    if w is not None:
                        np.testing.assert_array_equal(g, w)
            yp, am = fastconv.max_pool2d(x, 3, 2, 1, backend="old")
            want_y, want_am = fastconv.max_pool2d(x, 3, 2, 1, backend="numpy")
            np.testing.assert_array_equal(yp, want_y)
            np.testing.assert_array_equal(am, want_am)
            dp = rng.standard_normal(yp.shape)
            np.testing.assert_array_equal(
                fastconv.max_pool2d_backward(dp, am, x.shape, 3, 2, 1, backend="old"),
                fastconv.max_pool2d_backward(dp, am, x.shape, 3, 2, 1, backend="numpy"),
            )
        assert ("conv2d_forward", (0, 2)) in calls and ("conv2d_backward", (1, 1)) in calls  # pairs
        assert ("maxpool2d_forward", (1, 1)) in calls and ("maxpool2d_backward", (1, 1)) in calls
        calls.clear()
        conv = Convolution(W, b, backend="old")
        pool = Pooling(2, 2, stride=2, backend="old")
        out = pool.forward(conv.forward(x))
        conv.backward(pool.backward(np.ones_like(out)))
        assert [k for k, _ in calls] == [
            "conv2d_forward",
            "maxpool2d_forward",
            "maxpool2d_backward",
            "conv2d_backward",
        ]

        # what the version-1 calls cannot express is refused, naming the backend and the version
        v1 = r"backend 'old' implements version 1 of the fastconv.backends contract"
        xg, Wg = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((4, 2, 3, 3))
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        with pytest.raises(NotImplementedError, match=v1 + r".*groups=2"):
            fastconv.conv2d(xg, Wg, groups=2, backend="old")
        with pytest.raises(NotImplementedError, match=v1 + r".*layout='NHWC'"):
            fastconv.conv2d(x_nhwc, W, layout="NHWC", backend="old")
        with pytest.raises(NotImplementedError, match=v1 + r".*symmetric pad"):
            fastconv.conv2d(x, W, pad=((0, 1), (1, 1)), backend="old")
        with pytest.raises(NotImplementedError, match=v1 + r".*symmetric pad"):
            fastconv.conv2d(x, np.ones((4, 3, 2, 2)), pad="same", backend="old")  # (0, 1, 0, 1)
        with pytest.raises(NotImplementedError, match=v1 + r".*no ceil mode"):
            fastconv.max_pool2d(x, 2, ceil_mode=True, backend="old")  # 9 rows: 5 windows, not 4
        with pytest.raises(NotImplementedError, match=r"no avgpool2d_forward kernel \(new in version 2"):
            fastconv.avg_pool2d(x, 2, backend="old")
        with pytest.raises(NotImplementedError, match=r"no conv2d_backward_data kernel \(new in version 2"):
            fastconv.conv_transpose2d(x, rng.standard_normal((3, 2, 3, 3)), backend="old")
    finally:
        fastconv.unregister_backend("old")


def test_registering_an_incomplete_backend_lists_what_is_missing():
    with pytest.raises(TypeError, match=r"missing .*conv2d_forward"):
        fastconv.register_backend("half", types.SimpleNamespace(name="half", xp=np))
    with pytest.raises(ValueError, match=r"already registered"):
        fastconv.register_backend("numpy", numpy_backend)


def test_entry_point_plugins_are_found(tmp_path, monkeypatch):
    # A real distribution on sys.path advertising the fastconv.backends entry-point group.
    dist = tmp_path / "fcplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fcplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fastconv.backends]\nplugged = fcplugin_mod\n")
    (tmp_path / "fcplugin_mod.py").write_text(
        "from fastconv.backends.numpy import *\n"
        "from fastconv.backends.numpy import owns, to_device, to_host, xp\nname = 'plugged'\n"
    )
    code = (
        "import fastconv, numpy as np\nprint(fastconv.list_backends()['plugged'])\n"
        "print(fastconv.conv2d(np.ones((1,1,3,3)), np.ones((1,1,2,2)), backend='plugged').sum())"
    )
    out = run_python(code, PYTHONPATH=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "{'available': True, 'reason': None}" in out.stdout and "16.0" in out.stdout


def test_list_backends_reports_availability_and_reason():
    statuses = fastconv.list_backends()
    assert statuses["numpy"] == {"available": True, "reason": None}
    for name in ("numba", "cupy"):
        assert set(statuses[name]) == {"available", "reason"}
        assert statuses[name]["available"] or statuses[name]["reason"]


def test_auto_dispatch_sends_numpy_arrays_to_numba_when_available_else_numpy():
    expected = "numba" if fastconv.list_backends()["numba"]["available"] else "numpy"
    assert fastconv.get_backend(np.ones(1)) == expected
    with fastconv.use_backend("auto"):
        assert fastconv.get_backend(np.ones(1)) == expected


def test_info_command_prints_every_backend():
    out = subprocess.run(
        [sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for name in ("[numpy] available", "[numba]", "[cupy]", "blas"):
        assert name in out.stdout


def test_probes_are_cached():
    entry = _registry._entries["numpy"]
    fastconv.list_backends()
    loaded = entry.loaded
    fastconv.list_backends()
    assert entry.probed and entry.loaded is loaded
