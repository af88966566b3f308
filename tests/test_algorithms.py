"""The algorithm layer: ``algorithm=`` on conv2d/conv2d_backward/Convolution, the process setting,
the "auto" rules, autotuning, and every algorithm's accuracy against the float64 reference.

Accuracy is max|got - ref| / max|ref| per output (y; dx, dW, db), against the float64 direct loops of
:mod:`fastconv.testing.reference`, held to the bound README.md states per algorithm and dtype
(:data:`BOUND`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _algorithms
from fastconv.testing import reference as ref

pytest.importorskip("numba")

CPU_BACKENDS = ("numpy", "numba")
NAMED = ("gemm", "winograd", "winograd2", "direct")
# max relative error bounds (README.md, "Convolution algorithms"); Winograd's grow with m and with C*9
BOUND = {
    ("gemm", "float32"): 2e-5,
    ("direct", "float32"): 2e-5,
    ("winograd2", "float32"): 5e-6 * 4,
    ("winograd", "float32"): 5e-5,
    ("gemm", "float64"): 1e-12,
    ("direct", "float64"): 1e-12,
    ("winograd2", "float64"): 1e-12,
    ("winograd", "float64"): 1e-12,
}


def _rel(got, want) -> float:
    scale = float(np.max(np.abs(want))) or 1.0
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))) / scale


def _case(rng, n, c, f, h, w, k, dtype):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, W, b


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend=st.sampled_from(CPU_BACKENDS),
    name=st.sampled_from(NAMED),
    dtype=st.sampled_from(["float32", "float64"]),
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    f=st.integers(1, 5),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    pad=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_algorithm_matches_the_float64_reference_within_its_stated_bound(
    backend, name, dtype, n, c, f, h, w, pad, seed
):
    rng = np.random.default_rng(seed)
    x, W, b = _case(rng, n, c, f, h, w, 3, dtype)
    want = ref.conv2d(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), (1, 1), (pad, pad))
    y = fastconv.conv2d(x, W, b, 1, pad, algorithm=name, backend=backend)
    assert y.dtype == np.dtype(dtype)
    assert _rel(y, want) <= BOUND[name, dtype]
    dout = rng.standard_normal(y.shape).astype(dtype)
    grads = fastconv.conv2d_backward(dout, x, W, 1, pad, algorithm=name, backend=backend)
    wants = ref.conv2d_backward(
        dout.astype(np.float64), x.astype(np.float64), W.astype(np.float64), (1, 1), (pad, pad)
    )
    for got, expected in zip(grads, wants):
        assert got.dtype == np.dtype(dtype)
        assert _rel(got, expected) <= BOUND[name, dtype] * 4  # dW, db sum over N*OH*OW


@settings(max_examples=20, deadline=None)
@given(
    backend=st.sampled_from(CPU_BACKENDS),
    dtype=st.sampled_from(["float32", "float64"]),
    c=st.integers(1, 4),
    k=st.integers(1, 5),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_direct_runs_any_stride_pad_and_dilation(backend, dtype, c, k, stride, pad, dilation, seed):
    rng = np.random.default_rng(seed)
    x, W, b = _case(rng, 2, c, 3, 11, 10, k, dtype)
    if (11 + 2 * pad - dilation * (k - 1)) < 1 or (10 + 2 * pad - dilation * (k - 1)) < 1:
        return
    x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
    y = fastconv.conv2d(x, W, b, stride, pad, dilation, algorithm="direct", backend=backend)
    assert (
        _rel(y, ref.conv2d(x64, W64, b64, (stride,) * 2, (pad,) * 2, (dilation,) * 2))
        <= BOUND["direct", dtype]
    )
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = fastconv.conv2d_backward(
        dout, x, W, stride, pad, dilation, algorithm="direct", backend=backend
    )
    wdx, wdW, wdb = ref.conv2d_backward(
        dout.astype(np.float64), x64, W64, (stride,) * 2, (pad,) * 2, (dilation,) * 2
    )
    assert _rel(dx, wdx) <= BOUND["direct", dtype] * 4
    assert _rel(dW, wdW) <= BOUND["direct", dtype] * 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", NAMED)
def test_every_algorithm_is_deterministic_and_leaves_its_inputs_alone(backend, name, rng):
    x, W, b = _case(rng, 4, 6, 5, 14, 13, 3, "float32")
    dout = rng.standard_normal((4, 5, 14, 13)).astype(np.float32)
    copies = [a.copy() for a in (x, W, b, dout)]
    runs = [
        (
            fastconv.conv2d(x, W, b, 1, 1, algorithm=name, backend=backend),
            *fastconv.conv2d_backward(dout, x, W, 1, 1, algorithm=name, backend=backend),
        )
        for _ in range(2)
    ]
    for first, second in zip(*runs):
        assert np.array_equal(first, second)
    for a, copy in zip((x, W, b, dout), copies):
        assert np.array_equal(a, copy)


@pytest.mark.parametrize("name", NAMED)
def test_need_dx_false_gives_no_dx_and_the_same_dW(name, rng):
    x, W, _ = _case(rng, 2, 3, 4, 9, 9, 3, "float64")
    dout = rng.standard_normal((2, 4, 9, 9))
    dx, dW, db = fastconv.conv2d_backward(dout, x, W, 1, 1, algorithm=name, backend="numba")
    none, dW2, db2 = fastconv.conv2d_backward(
        dout, x, W, 1, 1, need_dx=False, algorithm=name, backend="numba"
    )
    assert none is None and np.allclose(dW, dW2, rtol=1e-12, atol=1e-12) and np.allclose(db, db2)


@pytest.mark.parametrize(
    "W_shape, stride, dilation, message",
    [
        ((4, 3, 5, 5), 1, 1, r"3x3 kernel.*\(5, 5\)"),
        ((4, 3, 3, 3), 2, 1, r"stride \(2, 2\)"),
        ((4, 3, 3, 3), 1, 2, r"dilation \(2, 2\)"),
    ],
)
@pytest.mark.parametrize("name", ["winograd", "winograd2"])
def test_a_named_algorithm_that_cannot_run_the_shape_is_refused_with_the_reason(
    name, W_shape, stride, dilation, message, rng
):
    x = rng.standard_normal((2, 3, 16, 16))
    W = rng.standard_normal(W_shape)
    with pytest.raises(
        ValueError, match=f"algorithm='{name}' cannot run this forward convolution.*{message}"
    ):
        fastconv.conv2d(x, W, None, stride, 1, dilation, algorithm=name, backend="numba")
    dout = np.ones_like(fastconv.conv2d(x, W, None, stride, 1, dilation, backend="numba"))
    with pytest.raises(ValueError, match=f"cannot run this backward convolution.*{message}"):
        fastconv.conv2d_backward(dout, x, W, stride, 1, dilation, algorithm=name, backend="numba")
    with pytest.raises(ValueError, match=message):
        fastconv.conv_algorithm(x.shape, W.shape, stride, 1, dilation, algorithm=name, backend="numba")


@pytest.mark.parametrize("bad", ["fft", "", None.__class__.__name__, 3, "GEMM"])
def test_an_unknown_algorithm_name_is_refused_everywhere(bad, rng):
    x, W, _ = _case(rng, 1, 2, 2, 5, 5, 3, "float64")
    with pytest.raises(ValueError, match="algorithm must be one of 'auto', 'gemm'"):
        fastconv.conv2d(x, W, algorithm=bad, backend="numba")
    before = fastconv.get_config()
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fastconv.configure(algorithm=bad)
    assert fastconv.get_config() == before


def test_a_backend_that_declares_no_algorithms_runs_gemm_and_refuses_the_others(rng):
    import types

    from fastconv.backends import REQUIRED
    from fastconv.backends import numpy as numpy_backend

    # the NumPy backend's (version-2) kernels and contract, without its algorithm layer
    plain = types.SimpleNamespace(**{a: getattr(numpy_backend, a) for a in (*REQUIRED, "contract")})
    plain.name = "plain"
    assert plain.contract == 2 and not hasattr(plain, "algorithms")
    fastconv.register_backend("plain", plain)
    try:
        x, W, _ = _case(rng, 2, 3, 4, 8, 8, 3, "float64")
        want = fastconv.conv2d(x, W, backend="numpy", algorithm="gemm")
        assert np.array_equal(fastconv.conv2d(x, W, backend="plain"), want)
        assert np.array_equal(fastconv.conv2d(x, W, backend="plain", algorithm="gemm"), want)
        assert fastconv.conv_algorithm(x.shape, W.shape, backend="plain") == "gemm"
        # the version-2 calls reach it: groups, NHWC, an asymmetric pad
        W2 = rng.standard_normal((6, 1, 3, 3))  # groups=3 on x's 3 channels: depthwise, multiplier 2
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for args in (dict(groups=3), dict(layout="NHWC"), dict(pad=((0, 1), (2, 1)))):
            xx = x_nhwc if args.get("layout") == "NHWC" else x
            WW = W2 if "groups" in args else W
            np.testing.assert_array_equal(
                fastconv.conv2d(xx, WW, backend="plain", **args),
                fastconv.conv2d(xx, WW, backend="numpy", algorithm="gemm", **args),
            )
        with pytest.raises(ValueError, match="'winograd' is not implemented by backend 'plain'"):
            fastconv.conv2d(x, W, backend="plain", algorithm="winograd")
    finally:
        fastconv.unregister_backend("plain")


def test_the_process_setting_is_a_preference_and_a_call_argument_wins(rng):
    x3, W3, _ = _case(rng, 2, 3, 4, 10, 10, 3, "float32")
    W5 = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    with fastconv.configure(algorithm="winograd"):
        assert fastconv.conv_algorithm(x3.shape, W3.shape, 1, 1, backend="numba") == "winograd"
        # a shape winograd cannot run takes "auto", and says so through conv_algorithm
        auto5 = fastconv.conv_algorithm(x3.shape, W5.shape, 1, 1, backend="numba")
        assert auto5 != "winograd"
        np.testing.assert_array_equal(
            fastconv.conv2d(x3, W5, None, 1, 1, backend="numba"),
            fastconv.conv2d(x3, W5, None, 1, 1, algorithm=auto5, backend="numba"),
        )
        assert fastconv.conv_algorithm(x3.shape, W3.shape, 1, 1, algorithm="gemm", backend="numba") == "gemm"
        np.testing.assert_array_equal(
            fastconv.conv2d(x3, W3, None, 1, 1, backend="numba"),
            fastconv.conv2d(x3, W3, None, 1, 1, algorithm="winograd", backend="numba"),
        )
    assert fastconv.get_config()["algorithm"] == "auto"


def test_the_convolution_layer_passes_its_algorithm_through(rng):
    from fastconv.layers import Convolution

    x, W, b = _case(rng, 3, 4, 5, 12, 12, 3, "float32")
    dout = rng.standard_normal((3, 5, 12, 12)).astype(np.float32)
    layer = Convolution(W, b, 1, 1, algorithm="winograd2", backend="numba")
    y = layer.forward(x)
    dx = layer.backward(dout)
    assert np.array_equal(y, fastconv.conv2d(x, W, b, 1, 1, algorithm="winograd2", backend="numba"))
    want = fastconv.conv2d_backward(dout, x, W, 1, 1, algorithm="winograd2", backend="numba")
    assert np.array_equal(dx, want[0]) and np.array_equal(layer.dW, want[1])
    with pytest.raises(ValueError, match="winograd"):
        Convolution(W, b, 2, 1, algorithm="winograd", backend="numba").forward(x)


def test_auto_rules_pick_an_algorithm_that_can_run_every_shape():
    from fastconv.bench.cases import CASES, ConvCase

    for case in CASES:
        if not isinstance(case, ConvCase):
            continue
        for direction in _algorithms.DIRECTIONS:
            for dtype in ("float32", "float64"):
                name = fastconv.conv_algorithm(
                    case.x_shape,
                    case.w_shape,
                    case.stride,
                    case.pad,
                    dtype=dtype,
                    direction=direction,
                    backend="numba",
                )
                assert name in NAMED
                impl = fastconv.get_backend_object("numba")
                assert (
                    _algorithms.why_not(
                        impl,
                        name,
                        _algorithms.Conv(
                            direction,
                            case.x_shape,
                            case.w_shape,
                            (case.stride,) * 2,
                            (case.pad,) * 4,
                            (1, 1),
                        ),
                    )
                    is None
                )


def test_autotune_times_the_candidates_once_and_keeps_the_choice_on_disk(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    _algorithms.tuner.forget()
    x, W, b = _case(rng, 2, 4, 4, 10, 10, 3, "float32")
    calls = []
    numba_backend = fastconv.get_backend_object("numba")
    real = numba_backend.conv2d_forward

    def counting(*args, algorithm="gemm", **kwargs):
        calls.append(algorithm)
        return real(*args, algorithm=algorithm, **kwargs)

    monkeypatch.setattr(numba_backend, "conv2d_forward", counting)
    try:
        with fastconv.configure(autotune=True):
            y = fastconv.conv2d(x, W, b, 1, 1, backend="numba")
            tuned = set(calls)
            assert tuned == {"gemm", "winograd", "winograd2", "direct"}  # every candidate was timed
            chosen = fastconv.conv_algorithm(x.shape, W.shape, 1, 1, backend="numba")
            assert chosen in tuned
            np.testing.assert_array_equal(y, real(x, W, b, (1, 1), (1, 1), (1, 1), algorithm=chosen))
            calls.clear()
            fastconv.conv2d(x, W, b, 1, 1, backend="numba")
            assert calls == [chosen]  # tuned once per shape
            files = list((tmp_path / "autotune").glob("numba-*.json"))
            assert len(files) == 1
            assert chosen in json.loads(files[0].read_text()).values()
            _algorithms.tuner.forget()  # a new process: the choice comes back from the file
            calls.clear()
            fastconv.conv2d(x, W, b, 1, 1, backend="numba")
            assert calls == [chosen]
    finally:
        _algorithms.tuner.forget()
    assert not fastconv.get_config()["autotune"]


def test_autotune_starts_from_the_environment_variable():
    import subprocess
    import sys

    code = "import fastconv; print(fastconv.get_config()['autotune'])"
    for value, expected in (("1", "True"), ("0", "False"), ("", "False")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "FASTCONV_AUTOTUNE": value},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        assert out == expected, value


def test_a_tuned_choice_holds_for_one_thread_count_and_gemm_threading():
    conv = _algorithms.Conv("forward", (2, 4, 10, 10), (4, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    keys = set()
    for threads in (1, 2):
        for gemm_threads in ("blas", "split"):
            with fastconv.configure(threads=threads, gemm_threads=gemm_threads):
                keys.add(_algorithms.Tuner.key(conv, "float32", _algorithms._threads()))
    assert len(keys) == 4
