"""The numba backend's own behaviour: chunking, pooling edge cases, threads, warm-up, lazy import.

The backend-parametrised tests (test_kernels.py, ...) already run every kernel on numba through
the public API; here the convolution is forced through one chunk and through one-image chunks
and checked against the float64 references, and the numba-specific machinery is tested in
fresh processes where it depends on process state (the kernel cache, NUMBA_DISABLE_JIT, imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastconv._shapes import as_pad4, conv_output_size
from fastconv.testing import reference as ref

pytest.importorskip("numba")

import fastconv  # noqa: E402
from fastconv.backends import numba as nb  # noqa: E402
from fastconv.backends import numpy as numpy_backend  # noqa: E402
from fastconv.backends.numba import ops as nb_ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-11)}
ONE = (1, 1)
ZERO4 = (0, 0, 0, 0)

# (x shape, W shape, stride, pad, dilation) as (h, w) pairs; pad a symmetric (h, w) pair or
# (top, bottom, left, right), passed to the kernels as the contract's 4-tuple
CASES = [
    ((2, 3, 7, 8), (4, 3, 3, 2), (1, 1), (1, 0), (1, 1)),
    ((3, 1, 9, 9), (5, 1, 3, 3), (2, 1), (2, 1), (2, 1)),
    ((2, 4, 6, 7), (3, 4, 2, 3), (2, 3), (0, 2), (1, 2)),
    ((5, 5, 8, 8), (6, 5, 3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2, 5, 5), (2, 2, 5, 5), (1, 1), (0, 0), (1, 1)),  # window = input
    ((2, 1, 6, 6), (3, 1, 1, 1), (3, 2), (2, 2), (1, 1)),  # 1x1 reading only padding at the border
    ((2, 3, 7, 8), (4, 3, 3, 2), (2, 1), (0, 2, 1, 0), (1, 2)),  # asymmetric pads
    # from ops.NHWC_GEMM_MIN_C input channels the NCHW GEMM runs on NHWC copies
    ((2, 16, 9, 7), (5, 16, 3, 2), (2, 1), (1, 2, 0, 1), (1, 2)),
    ((3, 20, 6, 6), (8, 20, 1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 17, 11, 10), (6, 17, 4, 4), (2, 2), (1, 1), (1, 1)),
]


def _fresh_python(code: str, drop: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter (fresh numba state), without the environment variables
    ``drop`` and with ``env``; it must succeed."""
    kept = {k: v for k, v in os.environ.items() if k not in drop}
    full_env = {**kept, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done


def _run_in_fresh_python(code: str, drop: tuple[str, ...] = (), **env: str) -> str:
    """:func:`_fresh_python`'s stdout."""
    return _fresh_python(code, drop, **env).stdout


def _pytest_without_jit(*args: str) -> None:
    """Run pytest on ``args`` in a fresh process with NUMBA_DISABLE_JIT=1; it must pass."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


def _pool_args(x_shape, kernel, stride, pad, dilation):
    """The max-pool kernels' window arguments (kh, kw, stride, pad4, dilation) for ``pad`` a pair or
    a 4-tuple, and the floor-mode out_hw the forward kernel takes after them."""
    pad4 = as_pad4(pad)
    return (*kernel, stride, pad4, dilation), conv_output_size(x_shape[2:], kernel, stride, pad4, dilation)


def _data(rng, xs, ws, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, W, b


@pytest.fixture(
    params=[(1 << 30, 0), (1, 0), (1 << 30, 1 << 30), (1, 1 << 30)],
    ids=["one-chunk", "one-image-chunks", "one-chunk-wide", "one-image-chunks-wide"],
)
def chunk_bytes(request, monkeypatch):
    """Every image in one chunk of columns, and one image per chunk; one GEMM per image, and one
    GEMM per chunk (the wide layout)."""
    chunk, wide_max_p = request.param
    monkeypatch.setattr(nb_ops, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(nb_ops, "WIDE_MAX_P", wide_max_p)
    return chunk


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, pad, dilation", CASES)
def test_conv_matches_the_float64_reference(rng, chunk_bytes, dtype, xs, ws, stride, pad, dilation):
    x, W, b = _data(rng, xs, ws, dtype)
    y = nb.conv2d_forward(x, W, b, stride, as_pad4(pad), dilation, 1, "NCHW")
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref.conv2d(x, W, b, stride, pad, dilation), **TOL[dtype])
    dout = rng.standard_normal(y.shape).astype(dtype)
    got = nb.conv2d_backward(dout, x, W, stride, as_pad4(pad), dilation, 1, "NCHW", True)
    want = ref.conv2d_backward(dout, x, W, stride, pad, dilation)
    for name, g, w in zip(("dx", "dW", "db"), got, want):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, w, **TOL[dtype], err_msg=name)


def test_conv_skips_dx_when_not_needed(rng, chunk_bytes):
    x, W, _ = _data(rng, (2, 3, 6, 6), (4, 3, 3, 3), np.float64)
    dout = rng.standard_normal((2, 4, 4, 4))
    dx, dW, db = nb.conv2d_backward(dout, x, W, ONE, ZERO4, ONE, 1, "NCHW", False)
    assert dx is None
    want = ref.conv2d_backward(dout, x, W)
    np.testing.assert_allclose(dW, want[1], **TOL[np.float64])
    np.testing.assert_allclose(db, want[2], **TOL[np.float64])


def test_conv_has_gradients_equal_to_numerical_gradients(rng, chunk_bytes):
    x, W, b = _data(rng, (2, 2, 6, 5), (3, 2, 3, 3), np.float64)
    stride, pad, dilation = (2, 1), (1, 1, 1, 1), (1, 2)
    g = rng.standard_normal(nb.conv2d_forward(x, W, b, stride, pad, dilation, 1, "NCHW").shape)

    def loss(x_, W_, b_):
        return float((nb.conv2d_forward(x_, W_, b_, stride, pad, dilation, 1, "NCHW") * g).sum())

    dx, dW, db = nb.conv2d_backward(g, x, W, stride, pad, dilation, 1, "NCHW", True)
    eps = 1e-6
    for arr, grad in ((x, dx), (W, dW), (b, db)):
        for idx in list(np.ndindex(arr.shape))[:: max(1, arr.size // 25)]:
            old = arr[idx]
            arr[idx] = old + eps
            up = loss(x, W, b)
            arr[idx] = old - eps
            down = loss(x, W, b)
            arr[idx] = old
            assert abs((up - down) / (2 * eps) - grad[idx]) < 1e-6 * max(1.0, abs(grad[idx]))


def test_conv_agrees_with_the_numpy_backend(rng, chunk_bytes):
    x, W, b = _data(rng, (4, 6, 9, 9), (5, 6, 3, 3), np.float32)
    args = ((2, 1), (1, 1, 1, 1), ONE, 1, "NCHW")  # stride, pad, dilation, groups, layout
    want = numpy_backend.conv2d_forward(x, W, b, *args)
    dout = rng.standard_normal(want.shape).astype(np.float32)
    want_b = numpy_backend.conv2d_backward(dout, x, W, *args)
    np.testing.assert_allclose(nb.conv2d_forward(x, W, b, *args), want, **TOL[np.float32])
    for g, w in zip(nb.conv2d_backward(dout, x, W, *args, True), want_b):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_conv_is_bitwise_reproducible_and_leaves_inputs_alone(rng, chunk_bytes):
    x, W, b = _data(rng, (4, 3, 8, 8), (5, 3, 3, 3), np.float32)
    dout = rng.standard_normal((4, 5, 6, 6)).astype(np.float32)
    copies = [a.copy() for a in (x, W, b, dout)]
    runs = [
        (
            nb.conv2d_forward(x, W, b, ONE, ZERO4, ONE, 1, "NCHW"),
            *nb.conv2d_backward(dout, x, W, ONE, ZERO4, ONE, 1, "NCHW", True),
        )
        for _ in range(2)
    ]
    for first, second in zip(*runs):
        assert np.array_equal(first, second)
    for a, c in zip((x, W, b, dout), copies):
        assert np.array_equal(a, c)


def test_book_layout_im2col_and_col2im_match_the_numpy_backend(rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    for pad in ((1, 1, 2, 2), (0, 2, 1, 0)):  # symmetric and asymmetric (top, bottom, left, right)
        args = (3, 2, (2, 1), pad, (1, 2))
        col = nb.im2col(x, *args)
        np.testing.assert_array_equal(col, numpy_backend.im2col(x, *args))
        np.testing.assert_allclose(
            nb.col2im(col, x.shape, *args), numpy_backend.col2im(col, x.shape, *args), rtol=1e-6
        )


def test_pooling_picks_the_first_maximum_and_the_first_nan_like_numpy_argmax():
    x = np.array(
        [
            [
                [
                    [1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, np.nan, np.nan],
                    [-np.inf, -np.inf, 5.0, 5.0],
                    [-np.inf, -np.inf, 5.0, 5.0],
                ]
            ]
        ],
        dtype=np.float32,
    )
    y, am = nb.maxpool2d_forward(x, 2, 2, (2, 2), ZERO4, ONE, (2, 2), "NCHW")
    assert am.dtype == np.int32
    np.testing.assert_array_equal(am[0, 0], [[1, 2], [0, 0]])
    np.testing.assert_array_equal(y[0, 0], [[3.0, np.nan], [-np.inf, 5.0]])
    want_y, want_am = numpy_backend.maxpool2d_forward(x, 2, 2, (2, 2), ZERO4, ONE, (2, 2), "NCHW")
    np.testing.assert_array_equal(am, want_am)


def test_pooling_skips_padding_so_an_all_minus_inf_window_names_its_first_input_element():
    """Padding is skipped, not read as -inf (PyTorch's): in a window of -inf the argmax names the
    window's first element of x in row-major order, never a padded position, and the gradient goes
    to that element."""
    x = np.full((1, 1, 3, 3), -np.inf, dtype=np.float64)
    pad = (1, 1, 1, 1)
    y, am = nb.maxpool2d_forward(x, 3, 3, (2, 2), pad, ONE, (2, 2), "NCHW")
    want_y, want_am = numpy_backend.maxpool2d_forward(x, 3, 3, (2, 2), pad, ONE, (2, 2), "NCHW")
    # window (0, 0) reads rows/cols -1..1: x[0, 0] is tap (1, 1) = 4; window (0, 1) cols 1..3: x[0, 1]
    # is tap (1, 0) = 3; window (1, 0): x[1, 0] is tap (0, 1) = 1; window (1, 1): x[1, 1] is tap 0
    np.testing.assert_array_equal(am[0, 0], [[4, 3], [1, 0]])
    np.testing.assert_array_equal(am, want_am)
    ref_y, ref_am = ref.max_pool2d(x, (3, 3), (2, 2), pad, ONE, (2, 2))
    np.testing.assert_array_equal(am, ref_am)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -np.inf))
    dx = nb.maxpool2d_backward(np.ones_like(y), am, x.shape, 3, 3, (2, 2), pad, ONE, "NCHW")
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        dx,
        numpy_backend.maxpool2d_backward(np.ones_like(y), want_am, x.shape, 3, 3, (2, 2), pad, ONE, "NCHW"),
    )


# (x shape, kernel, stride, pad, dilation): the unrolled 2x2 and 3x3 paths, the 2x2/2 tiling
# backward (even and odd sizes), overlapping windows, and the general loop
POOL_CASES = [
    ((2, 3, 8, 10), (2, 2), (2, 2), (0, 0), (1, 1)),
    ((2, 3, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1)),
    ((2, 3, 9, 11), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 2, 7, 8), (3, 3), (1, 1), (0, 1), (1, 1)),
    ((2, 2, 8, 9), (2, 3), (1, 2), (1, 0), (2, 1)),
    ((2, 2, 6, 6), (2, 2), (3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, kernel, stride, pad, dilation", POOL_CASES)
def test_pooling_fast_paths_match_the_numpy_backend_with_ties_nans_and_infs(
    rng, dtype, xs, kernel, stride, pad, dilation
):
    x = rng.integers(-3, 4, size=xs).astype(dtype)  # small integers: many ties
    x[1, 1, 2, 0] = np.inf
    x[1, 0, 0, 1] = -np.inf
    args, out_hw = _pool_args(xs, kernel, stride, pad, dilation)
    for nan in (False, True):  # with a NaN in x every window takes the exact loop
        if nan:
            x[0, 0, 1, 1:3] = np.nan
        y, am = nb.maxpool2d_forward(x, *args, out_hw, "NCHW")
        want_y, want_am = numpy_backend.maxpool2d_forward(x, *args, out_hw, "NCHW")
        np.testing.assert_array_equal(am, want_am)
        np.testing.assert_array_equal(y, want_y)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dout[0, 0, 0, 0] = np.inf  # a gradient the 2x2/2 bit-mask path must copy as is, with +0 around it
    dx = nb.maxpool2d_backward(dout, am, xs, *args, "NCHW")
    want = numpy_backend.maxpool2d_backward(dout, am, xs, *args, "NCHW")
    np.testing.assert_allclose(dx, want, **TOL[dtype])
    assert not np.signbit(dx[want == 0]).any()
    assert np.array_equal(dx, nb.maxpool2d_backward(dout, am, xs, *args, "NCHW"))  # deterministic


def test_warmup_compiles_every_kernel_for_float32_and_float64():
    from numba.core.registry import CPUDispatcher

    from fastconv.backends.numba import direct, kernels, pooling, winograd

    seconds = nb.warmup()
    assert seconds >= 0
    found = {
        f"{m.__name__.rsplit('.', 1)[1]}.{n}": f
        for m in (kernels, pooling, winograd, direct)
        for n, f in vars(m).items()
        if isinstance(f, CPUDispatcher) and not n.startswith("_")
    }
    assert len(found) >= 20
    assert {"kernels.im2col_planes", "pooling.maxpool_forward_nchw", "pooling.avgpool_backward_nhwc",
            "kernels.group_forward", "kernels.dw_forward_nhwc", "direct.direct_conv"} <= set(found)  # fmt: skip
    for name, kernel in found.items():
        # the dtype of each compiled signature's first float array (x, src, dout, ...)
        first_arrays = {
            next(str(a.dtype) for a in sig if str(getattr(a, "dtype", "")).startswith("float"))
            for sig in kernel.signatures
        }
        assert {"float32", "float64"} <= first_arrays, name


def test_configure_threads_sets_the_kernel_threads_and_blas_threads_together():
    from threadpoolctl import threadpool_info

    from fastconv.backends.numba import runtime

    before = runtime.num_threads()
    with fastconv.configure(threads=1):
        assert runtime.num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    assert runtime.num_threads() == before


def test_parallel_for_covers_every_item_once_in_order_with_any_thread_count():
    from fastconv.backends.numba import runtime

    for threads in (1, 2, 3, 7):
        shares = runtime.parallel_for(lambda t0, t1: list(range(t0, t1)), 10, threads=threads)
        assert len(shares) == (1 if threads == 1 else min(threads * runtime.SHARES_PER_THREAD, 10))
        assert [i for share in shares for i in share] == list(range(10))


def test_parallel_for_raises_a_shares_error_after_every_share_finished():
    import threading

    from fastconv.backends.numba import runtime

    done = []
    lock = threading.Lock()

    def kernel(t0, t1):
        if t0 > 0:
            raise ValueError(f"share {t0}")
        time.sleep(0.05)
        with lock:
            done.append(t0)

    with pytest.raises(ValueError, match="share"):
        runtime.parallel_for(kernel, 4, threads=2)
    assert done == [0]


def test_results_are_bitwise_identical_for_every_thread_count(rng):
    x, W = rng.standard_normal((6, 3, 11, 11)), rng.standard_normal((4, 3, 3, 3))
    dout = rng.standard_normal((6, 4, 9, 9))
    with fastconv.configure(threads=1):
        want = fastconv.conv2d(x, W, backend="numba"), fastconv.max_pool2d(x, 3, 2, 1, backend="numba")[0]
        dx1 = fastconv.conv2d_backward(dout, x, W, backend="numba")[0]
    for threads in (2, 3):
        with fastconv.configure(threads=threads):
            assert np.array_equal(fastconv.conv2d(x, W, backend="numba"), want[0])
            assert np.array_equal(fastconv.max_pool2d(x, 3, 2, 1, backend="numba")[0], want[1])
            assert np.array_equal(fastconv.conv2d_backward(dout, x, W, backend="numba")[0], dx1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_configure_threads_rejects_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="threads"):
        fastconv.configure(threads=bad)


def test_info_reports_numba_threads_and_blas():
    out = nb.info()
    for key in ("numba", "threads", "blas", "cache dir"):
        assert out[key], key
    assert out["gemm threads"].startswith(fastconv.get_config()["gemm_threads"] + ":")


def test_a_missing_numba_makes_the_backend_unavailable_with_the_install_hint():
    code = (
        "import sys; sys.modules['numba'] = None\nimport fastconv\nprint(fastconv.list_backends()['numba'])\n"
    )
    out = _run_in_fresh_python(code)
    assert "'available': False" in out and "pip install 'fastconv[numba]'" in out


def test_importing_fastconv_does_not_import_numba():
    code = "import sys, fastconv\nprint('numba' in sys.modules)\n"
    assert _run_in_fresh_python(code).strip() == "False"


def test_kernels_run_as_plain_python_under_numba_disable_jit():
    """The kernel tests of this file pass with NUMBA_DISABLE_JIT=1 (the kernels run as Python)."""
    _pytest_without_jit(
        __file__, "-k", "matches_the_float64_reference and one-chunk and not image or pooling or numerical"
    )


def test_shared_kernel_tests_pass_on_numba_under_numba_disable_jit():
    """tests/test_kernels.py, numba's share, with NUMBA_DISABLE_JIT=1: the kernels as Python for debugging."""
    _pytest_without_jit("tests/test_kernels.py", "-k", "numba")


@pytest.mark.slow
def test_cold_warmup_fills_an_empty_cache_that_a_fresh_process_then_loads(tmp_path):
    """With an empty NUMBA_CACHE_DIR, warmup compiles every kernel, a share of them in a child process
    (one process per core), the parent loading the child's from the cache; a fresh process then
    compiles nothing."""
    code = (
        "import json\n"
        "from fastconv.backends import numba as nb\n"
        "from numba.core.registry import CPUDispatcher\n"
        "from fastconv.backends.numba import kernels, pooling, winograd, direct\n"
        "cold = nb.cache_is_cold()\n"
        "nb.warmup()\n"
        "ks = {f'{m.__name__}.{n}': f for m in (kernels, pooling, winograd, direct) for n, f in vars(m).items()\n"
        "      if isinstance(f, CPUDispatcher) and getattr(f._cache, '_cache_path', None)}\n"
        "print(json.dumps([cold, nb.cache_is_cold(),\n"
        "                  {n: [len(k.stats.cache_hits), len(k.stats.cache_misses)] for n, k in ks.items()}]))\n"
    )
    # every cached kernel: the gemm unit's, the pool unit's (pooling.py), the depthwise and nhwc units'
    # (kernels.py), winograd's and direct's
    must = {
        f"fastconv.backends.numba.{n}"
        for n in (
            "kernels.im2col_planes", "kernels.col2im_planes",
            "pooling.maxpool_forward_nchw", "pooling.maxpool_backward_nchw",
            "pooling.maxpool_forward_nhwc", "pooling.maxpool_backward_nhwc",
            "pooling.avgpool_forward_nchw", "pooling.avgpool_backward_nchw",
            "kernels.group_forward", "kernels.group_dx", "kernels.group_dw",
            "kernels.dw_forward_nhwc", "kernels.dw_dx_nhwc", "kernels.dw_dw_nhwc",
            "kernels.im2col_nhwc", "kernels.col2im_nhwc",
            "winograd.tile_transform", "winograd.untile", "direct.direct_conv",
        )
    }  # fmt: skip
    done = _fresh_python(code, NUMBA_CACHE_DIR=str(tmp_path))
    was_cold, cold_after, stats = json.loads(done.stdout)
    assert was_cold and not cold_after, done.stderr
    assert must <= set(stats), sorted(must - set(stats))
    # float32 and float64, compiled or loaded
    assert all(hits + misses >= 2 for hits, misses in stats.values()), stats
    # some came from the child (whose failure warmup reports on stderr)
    assert any(hits for hits, _ in stats.values()), (stats, done.stderr)
    warm = json.loads(_run_in_fresh_python(code, NUMBA_CACHE_DIR=str(tmp_path)))
    assert not warm[0] and all(misses == 0 and hits >= 2 for hits, misses in warm[2].values()), warm


def test_kernels_run_from_several_python_threads_at_once():
    code = (
        "import threading, numpy as np, fastconv\n"
        "rng = np.random.default_rng(0)\n"
        "x, W = rng.standard_normal((8, 3, 12, 12)), rng.standard_normal((4, 3, 3, 3))\n"
        "want = fastconv.conv2d(x, W, backend='numba')\n"
        "want_pool = fastconv.max_pool2d(want, 2, backend='numba')[0]\n"
        "bad = []\n"
        "def work():\n"
        "    for _ in range(25):\n"
        "        y = fastconv.conv2d(x, W, backend='numba')\n"
        "        p = fastconv.max_pool2d(y, 2, backend='numba')[0]\n"
        "        bad.extend([] if np.array_equal(y, want) and np.array_equal(p, want_pool) else ['differs'])\n"
        "threads = [threading.Thread(target=work) for _ in range(3)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(len(bad))\n"
    )
    assert _run_in_fresh_python(code).strip() == "0"


@pytest.mark.slow
def test_a_first_call_that_compiles_says_so_once_and_a_cached_one_says_nothing(tmp_path):
    code = (
        "import sys, numpy as np, fastconv\n"
        "x, W = np.ones((2, 4, 10, 10), np.float32), np.ones((4, 4, 3, 3), np.float32)\n"
        "for algorithm in ('winograd', 'direct', 'gemm'):\n"
        "    fastconv.conv2d(x, W, None, 1, 1, backend='numba', algorithm=algorithm)\n"
        "print('done', file=sys.stderr)\n"
    )
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        runs.append(done.stderr)
    assert runs[0].count("numba is compiling") == 1, runs[0]  # once per process, however many kernels
    assert "numba is compiling" not in runs[1], runs[1]


def test_every_kernel_caches_in_fastconvs_directory_and_numbas_setting_is_left_alone(tmp_path):
    """runtime.cached_njit sets numba's cache directory only while a decorator runs: fastconv's
    kernels cache under runtime.CACHE_DIR, other numba code in the process keeps numba's default."""
    code = (
        "import json, numba\n"
        "before = numba.config.CACHE_DIR\n"
        "from numba.core.registry import CPUDispatcher\n"
        "from fastconv.backends.numba import runtime, kernels, winograd, direct\n"
        "ks = [f for m in (kernels, winograd, direct) for n, f in vars(m).items()\n"
        "      if isinstance(f, CPUDispatcher) and getattr(f._cache, '_cache_path', None)]\n"
        "print(json.dumps([before, numba.config.CACHE_DIR, runtime.CACHE_DIR,\n"
        "                  sorted({f._cache._cache_path for f in ks}), len(ks)]))\n"
    )
    out = _run_in_fresh_python(code, drop=("NUMBA_CACHE_DIR",), FASTCONV_CACHE_DIR=str(tmp_path))
    before, after, ours, paths, count = json.loads(out)
    assert after == before
    assert count >= 7 and paths and all(p.startswith(ours) for p in paths), (ours, paths)
    assert ours.startswith(str(tmp_path))


def test_compile_ahead_reports_a_child_that_failed(monkeypatch, capsys):
    """A child that could not compile its share is said on stderr (its kernels then compile on first use)."""
    nb = pytest.importorskip("fastconv.backends.numba")
    monkeypatch.setattr(nb, "cache_is_cold", lambda: True)
    monkeypatch.setattr(nb, "_compile", lambda units, dtypes: None)  # this process's share: not the point
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child: a process that exits with status 1
    nb.compile_ahead(("float32",), ("gemm", "pool", "winograd"), processes=2)()
    err = capsys.readouterr().err
    assert "a process compiling the numba kernels (" in err and "exited with status 1" in err
