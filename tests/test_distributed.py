"""fastconv.distributed: data-parallel training over MPI.

One-process parts (sharding, the single-process communicator, the optimizer wrapper, launch detection,
the error of a distributed option without an MPI launch) run here; the MPI parts run the venv's own
``mpiexec`` (next to ``sys.executable``) on 127.0.0.1 with 2, 3 or 4 ranks, each with a pytest timeout and
a subprocess timeout: replicas bit-identical after training and within 1e-6 of a one-process run with
the same global batch and seed (float64), uneven and empty slices, global histories, BatchNorm
statistics local or averaged, ``fastconv train`` under ``mpiexec`` (rank 0 alone writes; resume equals an
uninterrupted run), and a failing rank ending the whole job within seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# --strict-markers: the timeout marks below need the plugin (the test extra installs it)
if importlib.util.find_spec("pytest_timeout") is None:  # pragma: no cover
    if os.environ.get("CI"):
        raise ImportError("CI must run tests/test_distributed.py: pip install pytest-timeout")
    pytest.skip("pytest-timeout is not installed", allow_module_level=True)

from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import distributed
from fastconv.distributed import (
    DistributedOptimizer,
    SingleProcessCommunicator,
    create_communicator,
    epoch_order,
    global_batches,
    shard,
    shard_bounds,
    steps_per_epoch,
)
from fastconv.train import loop
from fastconv.train.optimizers import SGD, Adam

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
RUN_TIMEOUT = 90  # seconds for one mpiexec run (4 ranks share 2 cores on the smallest CI machine)
LAUNCH_VARS = (
    "PMI_SIZE",
    "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_RANK",
    "PMIX_RANK",
)
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"mpi_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mpiexec() -> list[str]:
    """The venv's mpiexec, bound to 127.0.0.1 (Hydra: forked locally, no ssh). Skips without mpi4py or
    mpiexec; under CI (``CI`` set) that is a failure: the extra ``fastconv[mpi]`` must be installed."""
    reason = None
    if importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install 'fastconv[mpi]')"
    elif not MPIEXEC.is_file():
        reason = f"no mpiexec next to {sys.executable} (pip install mpich)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MPI tests: {reason}")
        pytest.skip(f"the optional MPI extra is not installed: {reason}")
    version = subprocess.run(
        [str(MPIEXEC), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if "HYDRA" in version:
        return [str(MPIEXEC), "-hosts", "127.0.0.1", "-launcher", "fork"]
    return [str(MPIEXEC), "--host", "127.0.0.1", "--oversubscribe"]  # pragma: no cover - Open MPI


def _env() -> dict[str, str]:
    """The environment of a launched job: one BLAS/numba thread per rank (ranks share 2 cores), and no
    launcher variables inherited from an outer launch."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return env


def _launch(
    mpiexec: list[str], n: int, *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*mpiexec, "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# -- sharding ------------------------------------------------------------------------------------------
def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, 3, 0)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    np.testing.assert_array_equal(a, epoch_order(50, 3, 0))  # any rank, any time, after a resume
    assert not np.array_equal(a, epoch_order(50, 3, 1))
    assert not np.array_equal(a, epoch_order(50, 4, 0))
    # not the stream of the initial weights drawn from default_rng(seed)
    assert not np.array_equal(a, np.random.default_rng(3).permutation(50))
    np.testing.assert_array_equal(epoch_order(7, [1, 2], 5), epoch_order(7, [1, 2], 5))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 17), size=st.integers(1, 6), drop_last=st.booleans())
def test_rank_slices_tile_every_global_batch(n, batch, size, drop_last):
    order = epoch_order(n, 0, 0)
    batches = list(global_batches(order, batch, drop_last))
    assert len(batches) == steps_per_epoch(n, batch, drop_last)
    assert all(len(b) == batch for b in batches[: n // batch])
    if drop_last:
        assert all(len(b) == batch for b in batches)
    for b in batches:
        slices = [shard(b, r, size) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(slices), b)  # in rank order, nothing lost or repeated
        sizes = [len(s) for s in slices]
        assert max(sizes) - min(sizes) <= 1
    lo_hi = [shard_bounds(n, r, size) for r in range(size)]
    assert lo_hi[0][0] == 0 and lo_hi[-1][1] == n
    assert all(lo_hi[r][1] == lo_hi[r + 1][0] for r in range(size - 1))


def test_sharding_refuses_bad_arguments():
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        epoch_order(5, -1, 0)
    with pytest.raises(TypeError, match="seed must be"):
        epoch_order(5, "3", 0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        shard_bounds(5, 2, 2)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        steps_per_epoch(5, 0)


# -- the single-process communicator, the optimizer wrapper -----------------------------------------
def test_the_single_process_communicator_is_the_identity(rng):
    comm = create_communicator("single")
    assert isinstance(comm, SingleProcessCommunicator) and (comm.rank, comm.size, comm.is_root) == (
        0,
        1,
        True,
    )
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2).astype(np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
    got = comm.average_gradients(params, grads, 5)
    assert all(got[k] is grads[k] for k in grads)  # no rounding from weighting by 5 and dividing by 5
    np.testing.assert_array_equal(comm.allreduce_sum([1, 2.5]), [1.0, 2.5])
    before = {k: v.copy() for k, v in params.items()}
    comm.bcast_params(params)
    assert all(np.array_equal(params[k], before[k]) for k in params)
    assert comm.bcast_object("x") == "x" and comm.allgather_object(1) == [1]
    np.testing.assert_array_equal(comm.gather_rows(np.arange(3)), np.arange(3))
    comm.barrier()
    comm.idle_barrier()
    with pytest.raises(ValueError, match="no samples"):
        comm.average_gradients(params, None, 0)


def test_average_gradients_refuses_bad_input(rng):
    comm = SingleProcessCommunicator()
    params = {"w": np.zeros((3, 2))}
    with pytest.raises(ValueError, match=r"weight must be a finite number >= 0 .* got -1.0"):
        comm.average_gradients(params, {"w": np.zeros((3, 2))}, -1)
    with pytest.raises(KeyError, match=r"no entry for parameter\(s\) \['w'\]"):
        comm.average_gradients(params, {"v": np.zeros((3, 2))}, 1)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(2, 3\), params\['w'\] has \(3, 2\)"):
        comm.average_gradients(params, {"w": np.zeros((2, 3))}, 1)
    with pytest.raises(
        ValueError, match="backend must be one of 'auto', 'mpi', 'nccl', 'single', got 'gloo'"
    ):
        create_communicator("gloo")
    with pytest.raises(TypeError, match="optimizer must be a fastconv optimizer .* got str"):
        DistributedOptimizer("adam", comm)


def test_the_wrapped_optimizer_steps_as_the_optimizer_in_one_process(rng):
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    twin = {k: v.copy() for k, v in params.items()}
    plain, wrapped = Adam(0.01), DistributedOptimizer(Adam(0.01), SingleProcessCommunicator(), scale_lr=True)
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        plain.update(params, grads)
        wrapped.update(twin, {k: g.copy() for k, g in grads.items()}, weight=7)
    for k in params:
        assert params[k].tobytes() == twin[k].tobytes()
    assert wrapped.lr == 0.01 and wrapped.iter == 3 and wrapped.name == "adam"
    state = wrapped.state_dict()
    assert state["iter"] == 3 and set(state["slots"]) == {"m", "v"}
    fresh = DistributedOptimizer(Adam(0.5), SingleProcessCommunicator())
    fresh.load_state_dict(state, twin)
    assert fresh.optimizer.iter == 3 and fresh.lr == 0.01
    with pytest.raises(TypeError, match="already a DistributedOptimizer"):
        DistributedOptimizer(fresh, SingleProcessCommunicator())


def _tiny_model(seed: int):
    return _load_script("train_replicas").build("simple", seed)


def test_the_loop_with_one_process_trains_on_the_epoch_orders_of_seed_and_epoch(rng):
    """The reference of a many-rank run: the loop under a single-process communicator equals plain
    steps over epoch_order(seed, e), batch by batch, bit for bit; drop_last drops the short batch."""
    x, t = rng.standard_normal((23, 1, 8, 8)), rng.integers(0, 3, 23)
    x0, t0 = x.copy(), t.copy()
    model, twin = _tiny_model(1), _tiny_model(1)
    results = list(
        loop.train(
            model,
            SGD(0.1),
            x,
            t,
            epochs=2,
            batch_size=5,
            rng=np.random.default_rng(9),
            communicator=SingleProcessCommunicator(),
            seed=9,
            drop_last=True,
        )
    )
    opt = SGD(0.1)
    for epoch in range(2):
        order = epoch_order(23, 9, epoch)
        for b in range(4):  # 23 // 5 full batches; the 3 left are dropped
            idx = order[5 * b : 5 * b + 5]
            _, grads, _ = twin.loss_and_gradient(x[idx], t[idx])
            opt.update(twin.params, grads)
    for k in model.params:
        assert model.params[k].tobytes() == twin.params[k].tobytes(), k
    assert opt.iter == 8 and [r.epoch for r in results] == [1, 2]
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    np.testing.assert_array_equal(t, t0)
    with pytest.raises(ValueError, match="drop_last with 3 samples and batch_size 5 leaves no batch"):
        list(loop.train(model, SGD(0.1), x[:3], t[:3], epochs=1, batch_size=5, rng=None, drop_last=True))


def test_import_fastconv_and_a_single_process_run_import_no_mpi4py():
    code = (
        "import sys, fastconv, fastconv.distributed, fastconv.train.loop, fastconv.train.trainer\n"
        "fastconv.distributed.create_communicator('single')\n"
        "fastconv.distributed.create_communicator('auto')\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert proc.returncode == 0, proc.stderr


def test_an_mpi_launch_is_recognised_from_the_launchers_environment(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched_size() is None and not distributed.launched_under_mpi()
    with pytest.raises(ValueError, match=r"--scale-lr needs an MPI launch: run it as `mpiexec -n 4 fastconv"):
        distributed.require_mpi_launch("--scale-lr")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert distributed.launched_size() == 3 and distributed.launched_under_mpi()
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("PMIX_RANK", "0")
    assert distributed.launched_size() is None and distributed.launched_under_mpi()
    distributed.require_mpi_launch("--scale-lr")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "option",
    [["--distributed", "mpi"], ["--scale-lr"], ["--sync-bn-stats"], ["--distributed", "mpi", "--scale-lr"]],
)
def test_a_distributed_option_without_an_mpi_launch_says_how_to_launch(option, monkeypatch, capsys, tmp_path):
    from fastconv.train import trainer

    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    code = trainer.main([*option, "--out", str(tmp_path / "out"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(
        r"fastconv train: error: --\S+( mpi)? needs an MPI launch: run it as `mpiexec -n 4 fastconv train",
        err,
    ), err
    assert "pip install 'fastconv[mpi]'" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


# -- MPI -----------------------------------------------------------------------------------------------
@pytest.mark.timeout(2 * RUN_TIMEOUT)
@pytest.mark.parametrize("ranks", [2, 3])
def test_the_collectives_on_several_ranks(mpiexec, tmp_path, ranks):
    proc = _launch(mpiexec, ranks, str(SCRIPTS / "collectives.py"), str(tmp_path))
    _ok(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ok-{r}" for r in range(ranks)]


REPLICA_CASES = {
    # ranks, script options: every case's last global batch is short
    "1 rank (MPI) = one process": (1, ["--n", "45", "--batch", "8"]),
    "2 ranks, adam, uneven slices": (2, ["--n", "45", "--batch", "8"]),
    "4 ranks, momentum, empty slices in the last batch": (
        4,
        ["--n", "42", "--batch", "10", "--optimizer", "momentum"],
    ),
    "4 ranks, keras model, drop_last": (4, ["--model", "keras", "--n", "30", "--batch", "7", "--drop-last"]),
}


@pytest.mark.timeout(2 * RUN_TIMEOUT)
@pytest.mark.parametrize("case", list(REPLICA_CASES))
def test_replicas_are_bit_identical_and_match_one_process_with_the_same_global_batch(mpiexec, tmp_path, case):
    ranks, options = REPLICA_CASES[case]
    proc = _launch(
        mpiexec, ranks, str(SCRIPTS / "train_replicas.py"), "--out", str(tmp_path), "--expect-ranks", str(ranks),
        *options,
    )  # fmt: skip
    _ok(proc)
    ref = _load_script("train_replicas").main(
        ["--out", str(tmp_path), "--tag", "ref", "--comm", "single", *options]
    )
    zs = [dict(np.load(tmp_path / f"run-rank{r}.npz")) for r in range(ranks)]
    runs = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in range(ranks)]
    refz = dict(np.load(tmp_path / "ref-rank0.npz"))
    assert set(zs[0]) == set(refz)
    for r in range(1, ranks):  # the same bytes on every rank
        assert all(zs[r][k].tobytes() == zs[0][k].tobytes() for k in zs[0]), f"rank {r} differs from rank 0"
    for k in refz:  # float64: the sums over ranks only round differently
        np.testing.assert_allclose(zs[0][k], refz[k], rtol=0, atol=1e-6, err_msg=k)
        if ranks == 1:
            assert zs[0][k].tobytes() == refz[k].tobytes(), k
    for run in runs:  # histories are global: every rank reports the one-process numbers
        assert run["size"] == ranks and run["iter"] == ref["iter"]
        for got, want in zip(run["results"], ref["results"], strict=True):
            for key in ("loss", "val_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
            for key in ("accuracy", "val_accuracy"):
                assert got[key] == pytest.approx(want[key], abs=1e-12), key
            assert got["val_predictions"] == want["val_predictions"]
    if ranks > 1:
        assert runs[0]["steps"] == ref["iter"] and runs[0]["reduce_seconds"] > 0


def _fit_takes_a_communicator() -> bool:
    import inspect

    from fastconv.train.keras import Sequential

    return "communicator" in inspect.signature(Sequential.fit).parameters


@pytest.mark.timeout(2 * RUN_TIMEOUT)
@pytest.mark.skipif(not _fit_takes_a_communicator(), reason="Sequential.fit takes no communicator yet")
def test_sequential_fit_under_mpi_matches_one_process(mpiexec, tmp_path):
    options = ["--model", "keras", "--via-fit", "--n", "33", "--batch", "8"]
    _ok(_launch(mpiexec, 2, str(SCRIPTS / "train_replicas.py"), "--out", str(tmp_path), *options))
    ref = _load_script("train_replicas").main(
        ["--out", str(tmp_path), "--tag", "ref", "--comm", "single", *options]
    )
    zs = [dict(np.load(tmp_path / f"run-rank{r}.npz")) for r in range(2)]
    refz = dict(np.load(tmp_path / "ref-rank0.npz"))
    for k in refz:
        assert zs[0][k].tobytes() == zs[1][k].tobytes(), k
        np.testing.assert_allclose(zs[0][k], refz[k], rtol=0, atol=1e-6, err_msg=k)
    for r in range(2):
        run = json.loads((tmp_path / f"run-rank{r}.json").read_text())
        for got, want in zip(run["results"], ref["results"], strict=True):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_batchnorm_statistics_are_local_by_default_and_averaged_by_option(mpiexec, tmp_path):
    common = [str(SCRIPTS / "train_replicas.py"), "--out", str(tmp_path), "--model", "bn", "--n", "40"]
    _ok(_launch(mpiexec, 2, *common, "--tag", "local"))
    _ok(_launch(mpiexec, 2, *common, "--tag", "synced", "--sync-bn"))
    for tag, same_stats in (("local", False), ("synced", True)):
        a, b = (dict(np.load(tmp_path / f"{tag}-rank{r}.npz")) for r in range(2))
        assert {k for k in a if k.startswith("bn")} == {"bn0/mean", "bn0/var"}
        for k in a:
            if k.startswith("param/"):
                assert a[k].tobytes() == b[k].tobytes(), (tag, k)
            else:  # each rank's statistics are of its own slices unless averaged
                assert (a[k].tobytes() == b[k].tobytes()) == same_stats, (tag, k)


@pytest.mark.timeout(2 * RUN_TIMEOUT)
@pytest.mark.parametrize("ranks, failing", [(2, 1), (4, 2)])
def test_a_rank_that_raises_ends_the_whole_job_within_seconds(mpiexec, tmp_path, ranks, failing):
    start = time.monotonic()
    proc = _launch(
        mpiexec, ranks, str(SCRIPTS / "train_replicas.py"), "--out", str(tmp_path), "--fail-rank", str(failing),
        "--fail-after", "3", timeout=60,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert seconds < 20, f"the job took {seconds:.1f} s to end"
    assert f"uncaught RuntimeError on rank {failing} of {ranks}; aborting every rank" in proc.stderr
    assert f"rank {failing} fails on purpose at step 3" in proc.stderr
    assert not list(tmp_path.glob("*.npz"))  # no rank went on to finish


# -- fastconv train under mpiexec ---------------------------------------------------------------------
TRAIN = ["--dataset", "digits", "--model", "simple", "--backend", "numpy", "--dtype", "float64",
         "--batch-size", "100", "--no-progress", "--no-plots"]  # fmt: skip


def _history_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.skipif(not HAVE_SKLEARN, reason="digits needs scikit-learn")
@pytest.mark.timeout(4 * RUN_TIMEOUT)
def test_fastconv_train_under_mpiexec_resumes_to_the_uninterrupted_run_and_matches_one_process(
    mpiexec, tmp_path, capsys
):
    from fastconv.train import trainer

    straight, split, single = tmp_path / "straight", tmp_path / "split", tmp_path / "single"
    proc = _launch(mpiexec, 2, "-m", "fastconv", "train", *TRAIN, "--epochs", "2", "--out", str(straight))
    _ok(proc)
    # rank 0 alone prints and writes
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("epoch  train loss") == 1, (
        proc.stdout
    )
    assert "2 ranks (data-parallel over MPI, 100 images per step in all, 1 thread(s) each)" in proc.stdout
    assert sorted(p.name for p in straight.iterdir()) == ["checkpoint.npz", "history.csv", "model.npz"]
    _ok(_launch(mpiexec, 2, "-m", "fastconv", "train", *TRAIN, "--epochs", "1", "--out", str(split)))
    proc = _launch(
        mpiexec, 2, "-m", "fastconv", "train", *TRAIN, "--epochs", "2", "--out", str(split), "--resume"
    )
    _ok(proc)
    assert proc.stdout.count("resuming from") == 1
    with np.load(straight / "model.npz") as a, np.load(split / "model.npz") as b:
        assert a.files == b.files and all(a[k].tobytes() == b[k].tobytes() for k in a.files)
    assert _history_rows(straight / "history.csv") == _history_rows(split / "history.csv")
    # one process, same seed and global batch: equal up to the rounding of the sums over the ranks
    assert trainer.main([*TRAIN, "--epochs", "2", "--out", str(single)]) == 0
    capsys.readouterr()
    with np.load(straight / "model.npz") as a, np.load(single / "model.npz") as b:
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    rows = zip(_history_rows(straight / "history.csv"), _history_rows(single / "history.csv"), strict=True)
    for got, want in rows:  # history.csv has 6 decimals
        assert {k: float(v) for k, v in got.items()} == pytest.approx(
            {k: float(v) for k, v in want.items()}, abs=2e-6
        )


@pytest.mark.skipif(not HAVE_SKLEARN, reason="digits needs scikit-learn")
@pytest.mark.timeout(3 * RUN_TIMEOUT)
def test_fastconv_train_under_mpiexec_scales_the_rate_on_request_and_an_error_ends_every_rank(
    mpiexec, tmp_path
):
    out = tmp_path / "scaled"
    proc = _launch(
        mpiexec, 2, "-m", "fastconv", "train", *TRAIN, "--epochs", "1", "--scale-lr", "--out", str(out)
    )
    _ok(proc)
    assert "lr scaled by 2 to 0.006" in proc.stdout, proc.stdout
    # resuming with another number of ranks is allowed; the rate follows this run's ranks
    proc = _launch(mpiexec, 4, "-m", "fastconv", "train", *TRAIN, "--epochs", "2", "--scale-lr", "--out", str(out),
                   "--resume")  # fmt: skip
    _ok(proc)
    assert "lr scaled by 4 to 0.012" in proc.stdout
    start = time.monotonic()
    proc = _launch(mpiexec, 2, "-m", "fastconv", "train", *TRAIN, "--out", str(tmp_path / "none"), "--resume",
                   timeout=60)  # fmt: skip
    assert proc.returncode != 0 and time.monotonic() - start < 20
    assert "fastconv train: error on rank 0 of 2: --resume: no checkpoint at" in proc.stderr, proc.stderr


# -- GPU ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_nccl_and_staged_mpi_sums_of_device_buffers(mpiexec, tmp_path):
    pytest.importorskip("cupy")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no CUDA device: {exc}")
    code = (
        "import cupy, numpy as np\n"
        "from fastconv.distributed import create_communicator\n"
        "from fastconv.distributed.mpi import MPICommunicator\n"
        "c = create_communicator('nccl')\n"
        "buf = cupy.arange(5, dtype=cupy.float32)\n"
        "c._sum_inplace(buf); c._bcast_inplace(buf)\n"
        "assert (buf.get() == np.arange(5) * c.size).all(), buf\n"
        "m = MPICommunicator(); b = cupy.ones(3)\n"
        "m._sum_inplace(b); assert (b.get() == m.size).all()\n"
        "p = {'w': cupy.zeros((2, 2))}; g = m.average_gradients(p, {'w': cupy.ones((2, 2))}, 2.0)\n"
        "assert (g['w'].get() == 1).all()\n"
    )
    ranks = min(2, cupy.cuda.runtime.getDeviceCount())
    _ok(_launch(mpiexec, ranks, "-c", code))


@pytest.mark.timeout(60)
def test_an_mpiexec_of_another_mpi_than_mpi4pys_is_refused_not_run_n_times(mpiexec, tmp_path):
    """A launcher that started 3 processes while MPI sees 1 each (mpi4py built for another MPI): every
    process would train alone into the same --out. Simulated with the launcher's variable alone."""
    env = {**_env(), "PMI_SIZE": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastconv", "train", "--out", str(tmp_path / "out"), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "the launcher started 3 processes but MPI_COMM_WORLD has 1" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(3 * RUN_TIMEOUT)
def test_the_scaling_benchmark_runs_end_to_end(mpiexec):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling_mpi.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--ranks", "1,2", "--steps", "2", "--warmup", "1", "--batch", "8",
         "--backend", "numpy"],
        capture_output=True, text=True, timeout=2 * RUN_TIMEOUT, env=_env(), check=False,
    )  # fmt: skip
    _ok(proc)
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\| [12] \|", line)]
    assert len(rows) == 2 and "no allreduce" in rows[0] and "%" in rows[1], proc.stdout
