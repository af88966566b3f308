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
from fastconv.backends import numpy as numpy_backend
from fastconv.layers import Convolution, Pooling, Relu


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "FASTCONV_BACKEND"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def make_recording_backend(name: str, calls: list) -> types.SimpleNamespace:
    """A tiny third-party backend: NumPy kernels that record each call."""

    def recorded(kernel):
        def wrapper(*args, **kwargs):
            calls.append(kernel)
            return getattr(numpy_backend, kernel)(*args, **kwargs)

        return wrapper

    kernels = {
        k: recorded(k)
        for k in (
            "im2col",
            "col2im",
            "conv2d_forward",
            "conv2d_backward",
            "maxpool2d_forward",
            "maxpool2d_backward",
        )
    }
    return types.SimpleNamespace(
        name=name,
        xp=np,
        owns=lambda a: isinstance(a, np.ndarray),
        to_device=np.asarray,
        to_host=np.asarray,
        **kernels,
    )


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
