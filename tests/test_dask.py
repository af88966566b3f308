"""fastconv.dask: tiled conv2d and batch predict equal to the in-memory results, on the synchronous and
threaded schedulers and on a 2-worker LocalCluster (127.0.0.1); rechunking and refusals; worker thread
counts; ``fastconv predict`` end to end; the benchmark script in smoke mode.

Tolerances (fastconv.dask.conv2d's docstring): ``algorithm="direct"`` tiles equal the whole image bit for
bit; "gemm" and "auto" agree within 1e-5 * max|y| in float32 (1e-13 in float64), as BLAS may order a GEMM's
sums by the matrix sizes and "auto" may pick another algorithm per tile. predict equals the model's own
predict on the same batches with the same thread count bit for bit.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest


def _needed(module: str, reason: str):  # type: ignore[no-untyped-def]
    """The module, or a skip saying why; under CI (``CI`` set) a missing module is an error: CI installs
    the test extra, which holds dask, distributed and pytest-timeout, so these tests must run there."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


_needed("pytest_timeout", "the dask tests need pytest-timeout (pip install 'fastconv[test]')")
da = _needed("dask.array", "fastconv.dask needs dask[array]: pip install 'fastconv[dask]'")
distributed = _needed("distributed", "fastconv.dask needs distributed: pip install 'fastconv[dask]'")

import dask  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv  # noqa: E402
import fastconv.dask as fdask  # noqa: E402
from fastconv.cli import main as fastconv_main  # noqa: E402
from fastconv.dask import RechunkWarning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tolerance(dtype) -> float:
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-13


def _close(y, ref, algorithm):
    """y equals ref bit for bit for "direct", else within the stated bound relative to max|ref|."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    if algorithm == "direct":
        np.testing.assert_array_equal(y, ref)
    else:
        scale = max(float(np.abs(ref).max()), 1e-30)
        assert float(np.abs(y - ref).max()) <= _tolerance(ref.dtype) * scale


@pytest.fixture(scope="module")
def client():
    """One 2-worker LocalCluster for the module (it takes ~1.5-2 s to start)."""
    with fdask.local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def sync():
    with dask.config.set(scheduler="synchronous"):
        yield


# --------------------------------------------------------------------------------------------------
# conv2d
# (C, F, k, pad, stride, dilation, groups, chunks (N, C, H, W)) on x (3, C, 23, 19): odd and even kernels,
# same/valid/int/asymmetric pads, strides, dilation, groups, pads wider than the kernel, chunk sizes that
# do not divide H and W, many chunks, a batch split in chunks.
CASES = [
    (3, 4, 3, "same", 1, 1, 1, (1, -1, 7, 9)),
    (2, 3, 4, "same", 1, 1, 1, (2, -1, 5, 4)),
    (3, 4, 3, "valid", 1, 1, 1, (1, -1, 3, 3)),
    (2, 3, 5, "valid", 1, 2, 1, (1, -1, 9, 5)),
    (2, 2, 3, "same", 1, 3, 1, (3, -1, 8, 8)),
    (4, 4, 3, 1, 2, 1, 2, (1, -1, 7, 9)),
    (3, 2, 3, ((0, 2), (1, 0)), 3, 1, 1, (2, -1, 5, 4)),
    (2, 2, 1, 3, 1, 1, 1, (1, -1, 3, 3)),
    (2, 2, 2, ((3, 0), (0, 4)), 2, 1, 1, (1, -1, 3, 3)),
    (4, 4, 3, "same", 1, 1, 4, (1, -1, 6, 6)),
]


def _case_arrays(rng, C, F, k, groups, dtype=np.float32, shape=(3, 23, 19)):
    n, h, w = shape
    x = rng.standard_normal((n, C, h, w)).astype(dtype)
    W = rng.standard_normal((F, C // groups, k, k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, W, b


@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm", ["direct", "gemm", None])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_tiled_conv2d_equals_in_memory(backend, rng, sync, case, algorithm):
    C, F, k, pad, stride, dilation, groups, chunks = case
    x, W, b = _case_arrays(rng, C, F, k, groups)
    copies = (x.copy(), W.copy(), b.copy())
    ref = fastconv.conv2d(x, W, b, stride, pad, dilation, groups, algorithm=algorithm, backend=backend)
    y = fdask.conv2d(
        da.from_array(x, chunks=chunks),
        W,
        b,
        stride,
        pad,
        dilation,
        groups,
        algorithm=algorithm,
        backend=backend,
    )
    assert isinstance(y, da.Array) and y.shape == ref.shape
    _close(y.compute(), ref, algorithm)
    for a, c in zip((x, W, b), copies):
        np.testing.assert_array_equal(a, c)  # inputs unmodified


@pytest.mark.timeout(60)
def test_same_padding_keeps_the_input_chunks(sync):
    x = da.zeros((2, 3, 50, 42), chunks=(1, 3, 16, 10), dtype=np.float32)
    for k in (1, 2, 3, 4, 5):
        y = fdask.conv2d(x, np.ones((5, 3, k, k), np.float32), pad="same")
        assert y.chunks == ((1, 1), (5,), x.chunks[2], x.chunks[3])


@pytest.mark.timeout(60)
def test_float64_and_nhwc(backend, rng, sync):
    x, W, b = _case_arrays(rng, 3, 5, 3, 1, dtype=np.float64, shape=(2, 30, 27))
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ref = fastconv.conv2d(xh, W, b, 2, ((1, 0), (0, 1)), 1, layout="NHWC", backend=backend)
    y = fdask.conv2d(
        da.from_array(xh, chunks=(1, 8, 11, 3)), W, b, 2, ((1, 0), (0, 1)), 1, layout="NHWC", backend=backend
    ).compute()
    _close(y, ref, None)
    ref = fastconv.conv2d(x, W, 0.5, 1, "valid", 2, algorithm="direct", backend=backend)
    y = fdask.conv2d(
        da.from_array(x, chunks=(2, 3, 9, 9)), W, 0.5, 1, "valid", 2, algorithm="direct", backend=backend
    )
    _close(y.compute(), ref, "direct")


@st.composite
def _tiled(draw):
    k = draw(st.integers(1, 5))
    d = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    dk = d * (k - 1) + 1
    h = draw(st.integers(max(1, dk - 4), 30))
    w = draw(st.integers(max(1, dk - 4), 30))
    pads = draw(st.tuples(*[st.integers(0, 4)] * 4))
    if h + pads[0] + pads[1] < dk or w + pads[2] + pads[3] < dk:
        pads = (dk, dk, dk, dk)
    if draw(st.booleans()) and s == 1:
        pads = "same"
    ch, cw = draw(st.integers(1, h)), draw(st.integers(1, w))
    return k, d, s, h, w, pads, ch, cw


@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None)
@given(_tiled(), st.integers(0, 2**32 - 1))
def test_tiled_conv2d_on_drawn_shapes_and_chunks_is_bitwise_with_direct(params, seed):
    """Any kernel, stride, dilation, pad and tiling (tiles narrower than the halo are merged): bit for bit
    with the direct algorithm on the numpy backend."""
    k, d, s, h, w, pads, ch, cw = params
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, h, w)).astype(np.float32)
    W = rng.standard_normal((3, 2, k, k)).astype(np.float32)
    pad = pads if pads == "same" else ((pads[0], pads[1]), (pads[2], pads[3]))
    ref = fastconv.conv2d(x, W, None, s, pad, d, algorithm="direct", backend="numpy")
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RechunkWarning)
        y = fdask.conv2d(
            da.from_array(x, chunks=(1, 2, ch, cw)), W, None, s, pad, d, algorithm="direct", backend="numpy"
        )
        assert y.shape == ref.shape
        np.testing.assert_array_equal(y.compute(), ref)


@pytest.mark.timeout(120)
def test_tiled_conv2d_on_a_two_worker_cluster(client, rng):
    x, W, b = _case_arrays(rng, 3, 4, 3, 1, shape=(2, 130, 101))
    dx = da.from_array(x, chunks=(1, 3, 32, 40))
    for pad, algorithm in (("same", "direct"), ("valid", None), (((2, 0), (1, 1)), "gemm")):
        ref = fastconv.conv2d(x, W, b, 1, pad, algorithm=algorithm)
        _close(
            fdask.conv2d(dx, W, b, 1, pad, algorithm=algorithm, client=client, compute=True), ref, algorithm
        )
    # a lazily returned array computes on the default client too, and through the scheduler's address
    ref = fastconv.conv2d(x, W, b, 2, 1, algorithm="direct")
    _close(fdask.conv2d(dx, W, b, 2, 1, algorithm="direct").compute(), ref, "direct")
    address = client.scheduler.address
    y = fdask.conv2d(dx, W, b, 2, 1, algorithm="direct", client=address, compute=True)
    _close(y, ref, "direct")


@pytest.mark.timeout(60)
def test_chunked_channels_are_merged_with_a_warning_or_refused(rng, sync):
    x, W, b = _case_arrays(rng, 4, 3, 3, 1)
    dx = da.from_array(x, chunks=(1, 2, 10, 10))
    with pytest.warns(RechunkWarning, match="channel axis"):
        y = fdask.conv2d(dx, W, b, pad="same", algorithm="direct")
    _close(y.compute(), fastconv.conv2d(x, W, b, pad="same", algorithm="direct"), "direct")
    with pytest.raises(ValueError, match=r"chunked along its channel axis \(1: chunks \(2, 2\)\).*rechunk"):
        fdask.conv2d(dx, W, b, pad="same", rechunk=False)


@pytest.mark.timeout(60)
def test_tiles_narrower_than_the_halo_are_merged_with_a_warning_or_refused(rng, sync):
    x, W, b = _case_arrays(rng, 2, 3, 7, 1, shape=(1, 20, 20))  # halo 3 rows each side
    dx = da.from_array(x, chunks=(1, 2, (8, 2, 10), 20))
    with pytest.warns(RechunkWarning, match="narrower than the halo"):
        y = fdask.conv2d(dx, W, b, pad="same", algorithm="direct")
    assert min(y.chunks[2]) >= 3
    _close(y.compute(), fastconv.conv2d(x, W, b, pad="same", algorithm="direct"), "direct")
    with pytest.raises(ValueError, match=r"narrower than the halo of 3 rows.*at least 3 wide"):
        fdask.conv2d(dx, W, b, pad="same", rechunk=False)


@pytest.mark.timeout(60)
def test_conv2d_bad_input_says_what_it_needs(rng):
    x, W, b = _case_arrays(rng, 2, 3, 3, 1)
    dx = da.from_array(x, chunks=(1, 2, 10, 10))
    with pytest.raises(TypeError, match="dask.array.Array.*from_array"):
        fdask.conv2d(x, W)
    with pytest.raises(ValueError, match="channel mismatch"):
        fdask.conv2d(dx, W[:, :1])
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        fdask.conv2d(dx, W, pad="same", stride=2)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        fdask.conv2d(dx, W, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fdask.conv2d(dx, W, algorithm="fft")
    with pytest.raises(TypeError, match="floating dtype"):
        fdask.conv2d(dx.astype(np.int32), W)
    unknown = dx[dx[:, 0, 0, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fdask.conv2d(unknown, W)


def test_conv_halo():
    assert fdask.conv_halo((3, 3)) == (fdask.Halo(1, 1, 0, 0), fdask.Halo(1, 1, 0, 0))
    h, w = fdask.conv_halo((4, 5), "same", dilation=(1, 2))
    assert (h.before, h.after, h.pad_before, h.pad_after) == (1, 2, 1, 2)
    assert (w.before, w.after, w.pad_before, w.pad_after) == (4, 4, 4, 4)


# --------------------------------------------------------------------------------------------------
# predict
def _model(kind, input_shape=(1, 8, 8), seed=1):
    from fastconv.train.trainer import build_model

    model = build_model(kind, input_shape, np.random.default_rng(seed), np.float32, None)
    if hasattr(model, "build"):
        model.build()
    return model


def _in_memory(model, x, chunk, batch_size):
    """The model's own predict on the batches fastconv.dask.predict makes: batch_size images at a time
    from the start of each chunk."""
    outs = []
    for c0 in range(0, len(x), chunk):
        block = x[c0 : c0 + chunk]
        for i in range(0, len(block), batch_size):
            xb = block[i : i + batch_size]
            outs.append(
                model.predict(xb, batch_size=batch_size) if hasattr(model, "compile") else model.predict(xb)
            )
    return np.concatenate(outs)


def _params(model):
    return {k: np.array(v) for k, v in model.params.items()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
@pytest.mark.parametrize("kind", ["simple", "keras", "separable"])
def test_predict_equals_in_memory_predict(rng, kind, scheduler):
    model = _model(kind)
    x = rng.random((70, 1, 8, 8), dtype=np.float32)
    x_copy, params = x.copy(), _params(model)
    with dask.config.set(scheduler=scheduler):
        y = fdask.predict(model, da.from_array(x, chunks=24), batch_size=8)
        assert isinstance(y, da.Array) and y.chunks == ((24, 24, 22), (10,))
        # the threaded scheduler runs blocks at once, each on its own copy of the model
        with fastconv.configure(threads=1):
            np.testing.assert_array_equal(y.compute(), _in_memory(model, x, 24, 8))
            whole = _in_memory(model, x, 70, 70)
    np.testing.assert_allclose(y.compute(scheduler="synchronous"), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x_copy)
    for k, v in _params(model).items():
        np.testing.assert_array_equal(v, params[k])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["simple", "keras"])
def test_predict_on_a_two_worker_cluster(client, rng, kind):
    """Workers run one thread each: the reference runs with one thread too, and they agree bit for bit."""
    model = _model(kind)
    x = rng.random((90, 1, 8, 8), dtype=np.float32)
    with fastconv.configure(threads=1):
        ref = _in_memory(model, x, 32, 16)
    y = fdask.predict(model, da.from_array(x, chunks=32), batch_size=16, client=client, compute=True)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, ref)
    # a NumPy array is cut into blocks of batch_size images; a lazy result computes on the default client
    y = fdask.predict(model, x, batch_size=16).compute()
    with fastconv.configure(threads=1):
        np.testing.assert_array_equal(y, _in_memory(model, x, 16, 16))


@pytest.mark.timeout(60)
def test_compute_follows_the_current_scheduler(client):
    """client=None computes where ``arr.compute()`` would: the default client, unless the dask config names
    another scheduler; a client or its address runs on the cluster."""
    pid = da.from_delayed(dask.delayed(os.getpid, pure=False)(), shape=(), dtype=int)
    with dask.config.set(scheduler="synchronous"):
        assert fdask.compute(pid, progress=True) == os.getpid()
    workers = set(client.run(os.getpid).values())
    assert fdask.compute(pid) in workers
    assert fdask.compute(pid, client=client, progress=True) in workers
    assert fdask.compute(pid, client=client.scheduler.address) in workers


@pytest.mark.timeout(60)
def test_worker_threads_are_set_for_the_worker_count(client):
    report = client.run(fdask._worker_threads)
    assert len(report) == 2
    for r in report.values():
        assert r["fastconv"] == 1 and r["blas"] in ([1], [])
        assert r["env"] == dict.fromkeys(fdask.THREAD_ENV, "1")


@pytest.mark.timeout(60)
def test_predict_rechunks_image_axes_or_refuses(rng, sync):
    model = _model("simple")
    x = da.from_array(rng.random((10, 1, 8, 8), dtype=np.float32), chunks=(5, 1, 4, 8))
    with pytest.warns(RechunkWarning, match="axis 2 in 2 chunks"):
        y = fdask.predict(model, x, batch_size=4)
    assert y.chunks == ((5, 5), (10,))
    with pytest.raises(ValueError, match=r"batch axis \(0\) only.*x.rechunk\(\{2: -1\}\)"):
        fdask.predict(model, x, rechunk=False)


@pytest.mark.timeout(60)
def test_predict_bad_input(rng, sync):
    model = _model("simple")
    x = rng.random((4, 1, 8, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="predict"):
        fdask.predict(object(), x)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        fdask.predict(model, x, batch_size=0)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        fdask.predict(model, x, client=3, compute=True)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        fdask.predict(model, rng.random((4, 1, 9, 9)))
    y = fdask.predict(model, np.zeros((0, 1, 8, 8), np.float32)).compute()
    assert y.shape == (0, 10)


@pytest.mark.timeout(60)
def test_local_cluster_bad_arguments():
    with pytest.raises(ValueError, match="n_workers must be a positive int"):
        fdask.local_cluster(0)
    with pytest.raises(ValueError, match="processes=True"):
        fdask.local_cluster(1, processes=False)


@pytest.mark.timeout(60)
def test_import_fastconv_imports_no_dask():
    code = (
        "import sys, fastconv, fastconv.dask, fastconv.cli; "
        "print(sorted(m for m in ('dask', 'distributed', 'numba') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# fastconv predict
@pytest.fixture
def checkpoint(tmp_path):
    """A `fastconv train`-style run directory (checkpoint.npz and model.npz) with random weights."""
    from fastconv.train import trainer
    from fastconv.train.optimizers import make_optimizer

    model = _model("simple", seed=3)
    rng = np.random.default_rng(4)
    model.set_params({k: 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()})
    config = {"model": "simple", "dataset": "digits", "dtype": "float32", "epochs": 1}
    run = tmp_path / "run"
    run.mkdir()
    trainer.save_checkpoint(run / trainer.CHECKPOINT, model, make_optimizer("sgd", 0.1), rng, 0, [], config)
    model.save_params(run / "model.npz")
    return run, model


def _probabilities(model, x, chunk=None):
    """softmax of the model's logits, in blocks of ``chunk`` images as fastconv predict's tasks make them."""
    z = np.asarray(_in_memory(model, x, chunk or len(x), 256), dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(180)
def test_predict_cli_end_to_end(tmp_path, checkpoint, rng):
    run, model = checkpoint
    x = rng.random((50, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    x_bytes = (tmp_path / "x.npy").read_bytes()
    with fastconv.configure(threads=1):
        ref = _probabilities(model, x[:, None], chunk=16)
    cmd = [sys.executable, "-m", "fastconv", "predict", str(run), str(tmp_path / "x.npy")]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "p.csv"), "--chunk", "16", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "predicted 50 images" in done.stdout and "synchronous" in done.stdout
    rows = _csv(tmp_path / "p.csv")
    got = np.array([[float(r[f"p_{j}"]) for j in range(10)] for r in rows])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)  # 6 significant digits in the CSV
    assert [int(r["label"]) for r in rows] == list(ref.argmax(axis=1))
    # --workers 2: a local cluster for the run, probabilities as .npy, equal bit for bit (1 thread each)
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "p.npy"), "--chunk", "16", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert "a local cluster of 2 workers" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), ref)
    assert (tmp_path / "x.npy").read_bytes() == x_bytes


@pytest.mark.timeout(120)
def test_predict_cli_connects_to_a_running_scheduler(tmp_path, checkpoint, client, rng):
    run, model = checkpoint
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    with fastconv.configure(threads=1):
        ref = _probabilities(model, x, chunk=16)
    address = client.scheduler.address
    args = ["predict", str(run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.npy"), "--chunk", "16"]
    # a fresh process: no default client there, only the address (and a progress bar)
    done = subprocess.run(
        [sys.executable, "-m", "fastconv", *args, "--dask", address],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert f"on the scheduler at {address}" in done.stdout and "100% Completed" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), ref)
    assert len(client.scheduler_info()["workers"]) == 2  # the cluster is left running


@pytest.mark.timeout(120)
def test_predict_cli_reads_folders_zarr_and_integer_pixels(tmp_path, checkpoint, rng, capsys):
    run, model = checkpoint
    pixels = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    ref = _probabilities(model, (pixels.astype(np.float32) / np.float32(255))[:, None])
    np.save(tmp_path / "u8.npy", pixels)
    assert (
        fastconv_main(["predict", str(run), str(tmp_path / "u8.npy"), "--out", str(tmp_path / "a.npy")]) == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ref, rtol=1e-6, atol=1e-7)
    # a folder of one-image .npy files (and PNGs where Pillow is installed), sorted by name
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"img{i:02d}.npy", pixels[i])
    try:
        from PIL import Image

        for i in range(6, 12):
            Image.fromarray(pixels[i]).save(folder / f"img{i:02d}.png")
        n = 12
    except ModuleNotFoundError:
        n = 6
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "f.csv"
    assert (
        fastconv_main(
            ["predict", str(run / "model.npz"), str(folder), "--model", "simple", "--out", str(out)]
        )
        == 0
    )
    rows = _csv(out)
    assert [r["file"] for r in rows] == [f"img{i:02d}.{'npy' if i < 6 else 'png'}" for i in range(n)]
    got = np.array([[float(r[f"p_{j}"]) for j in range(10)] for r in rows])
    np.testing.assert_allclose(got, ref[:n], rtol=1e-5, atol=1e-6)
    zarr = pytest.importorskip("zarr")
    z = zarr.open_array(
        str(tmp_path / "x.zarr"), mode="w", shape=pixels.shape, chunks=(5, 8, 8), dtype="uint8"
    )
    z[:] = pixels
    assert (
        fastconv_main(["predict", str(run), str(tmp_path / "x.zarr"), "--out", str(tmp_path / "z.npy")]) == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), ref, rtol=1e-6, atol=1e-7)
    capsys.readouterr()


@pytest.mark.timeout(60)
def test_predict_cli_errors(tmp_path, checkpoint, capsys):
    run, _ = checkpoint
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "big.npy", np.zeros((3, 28, 28), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((3, 64), np.float32))
    (tmp_path / "empty").mkdir()
    x = str(tmp_path / "x.npy")
    cases = [
        ([str(tmp_path / "nope"), x], "model: no such file or directory"),
        ([str(tmp_path), x], "holds no checkpoint.npz"),
        ([str(run), str(tmp_path / "missing.npy")], "input: no such file or directory"),
        ([str(run), str(tmp_path / "empty")], "holds no images"),
        (
            [str(run), str(tmp_path / "big.npy")],
            r"trained on digits images of shape \(C, H, W\) = \(1, 8, 8\)",
        ),
        ([str(run), str(tmp_path / "flat.npy")], r"takes images \(N, H, W\) or \(N, C, H, W\)"),
        ([str(run / "model.npz"), x], "holds parameters only"),
        ([str(run), x, "--out", str(tmp_path / "p.txt")], "--out must end in .npy or .csv"),
        ([str(run), x, "--out", str(tmp_path / "no" / "p.csv")], "--out: no such directory"),
        ([str(run), x, "--workers", "0"], "--workers must be at least 1"),
        ([str(run), x, "--batch-size", "0"], "--batch-size must be at least 1"),
    ]
    for args, message in cases:
        assert fastconv_main(["predict", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("fastconv predict: error: ") and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(message, err), (message, err)
    with pytest.raises(SystemExit):
        fastconv_main(["predict", str(run), x, "--workers", "2", "--dask", "tcp://127.0.0.1:8786"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_cli_usage_lists_predict(capsys):
    assert fastconv_main(["--help"]) == 0
    assert "predict  run a trained network" in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_benchmark_script_smoke(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "dask_tiled.py"),
            "--size",
            "96",
            "--tile",
            "40",
            "--channels",
            "2",
            "--repeat",
            "1",
            "--images",
            "64",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr
    assert "| tiled conv2d" in done.stdout and "| predict" in done.stdout
