"""`fastconv train` end to end on the digits set: outputs, plots, checkpoints and exact resume, file modes,
leftovers of killed runs, errors, --threads; and what ``fastconv.train`` exports."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import pkgutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import fastconv
import fastconv.train
from fastconv.cli import main as fastconv_main
from fastconv.train import trainer
from fastconv.train._io import atomic_write, create_temporary
from fastconv.train.trainer import load_checkpoint

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="digits needs scikit-learn"),
]

QUICK = ["--backend", "numpy", "--no-progress", "--batch-size", "64"]


def _history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def umask():
    """umask(mask): set the process umask for this test; the previous one comes back afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_fastconv_train_writes_history_plots_model_and_checkpoint(tmp_path, capsys, umask):
    pytest.importorskip("matplotlib")
    umask(0o022)
    out = tmp_path / "run"
    assert fastconv_main(["train", "--epochs", "2", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "digits (scikit-learn, 8x8): 1,438 training and 359 test images" in printed
    assert "epoch  train loss  train acc  test loss  test acc" in printed
    assert "test accuracy" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {
        "history.csv",
        "curves.png",
        "predictions.png",
        "filters.png",
        "model.npz",
        "checkpoint.npz",
    }
    for png in ("curves.png", "predictions.png", "filters.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name: oct(_mode(p)) for p in out.iterdir()} == {name: "0o644" for name in names}  # shareable
    rows = _history(out / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["test_acc"]) > 0.5 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    meta, params, slots = load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 2 and meta["config"]["optimizer"] == "adam"
    assert set(slots) == {"m", "v"} and set(params) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    with np.load(out / "model.npz", allow_pickle=False) as model:
        for k in params:
            np.testing.assert_array_equal(model[k], params[k])


@pytest.mark.parametrize("model", ["simple", "keras"])
def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tmp_path, model):
    common = ["--model", model, "--seed", "3", "--no-plots", *QUICK]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert fastconv.train.main(["--epochs", "2", "--out", str(straight), *common]) == 0
    assert fastconv.train.main(["--epochs", "1", "--out", str(resumed), *common]) == 0
    assert fastconv.train.main(["--epochs", "2", "--out", str(resumed), "--resume", *common]) == 0
    with np.load(straight / "model.npz") as a, np.load(resumed / "model.npz") as b:
        assert a.files == b.files
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in _history(straight / "history.csv")] == [
        [r[k] for k in keys] for r in _history(resumed / "history.csv")
    ]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fastconv train: error: ") and err.count("\n") == 1, err
    return err


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert fastconv.train.main(["--epochs", "1", "--out", out, "--no-plots", *QUICK]) == 0
    assert fastconv.train.main(["--epochs", "1", "--out", out, "--resume", "--no-plots", *QUICK]) == 0  # done
    capsys.readouterr()
    code = fastconv.train.main(
        ["--epochs", "2", "--out", out, "--resume", "--lr", "0.01", "--no-plots", *QUICK]
    )
    assert code == 2
    assert "other settings: lr 0.003 (now 0.01)" in _error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume"], "--resume: no checkpoint at"),
        (["--dataset", "mnist", "--data", "{tmp}"], "MNIST files missing in"),
        (["--data", "{tmp}"], "--data is for --dataset mnist"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--threads", "-1"], "--threads must be 0"),
    ],
)
def test_train_reports_a_bad_setting_or_missing_file_on_one_line_with_status_2(
    tmp_path, capsys, args, message
):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert fastconv.train.main([*args, "--out", str(tmp_path / "out"), "--no-plots", *QUICK]) == 2
    assert message in _error_line(capsys)


# -- files a user can share, and what killed runs leave behind ---------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_write_gives_the_file_the_mode_the_umask_allows(tmp_path, umask, mask):
    umask(mask)
    path = atomic_write(tmp_path / "model.npz", lambda f: f.write(os.urandom(64)))
    assert _mode(path) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_a_temporary_is_named_after_its_file_and_its_writer(tmp_path):
    fd, tmp = create_temporary(tmp_path / "checkpoint.npz")
    os.close(fd)
    name, pid, token, kind = tmp.name[1:].rsplit(".", 3)
    assert (name, int(pid), kind) == ("checkpoint.npz", os.getpid(), "tmp") and int(token, 16) >= 0


def test_a_run_removes_the_temporaries_killed_runs_left_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    stale = [
        f".checkpoint.npz.{dead}.0badcafe.tmp",
        f".model.npz.{dead}.12ab34cd.tmp",
        f".history.csv.{dead}.1.tmp",
    ]
    kept = [
        f".checkpoint.npz.{alive}.0badcafe.tmp",  # a live process may still be writing it
        f".notes.txt.{dead}.0badcafe.tmp",  # not a file fastconv train writes
        "checkpoint.npz.tmp",
    ]
    for name in stale + kept:
        (out / name).write_bytes(os.urandom(32))
    assert fastconv.train.main(["--epochs", "1", "--out", str(out), "--no-plots", *QUICK]) == 0
    assert "removed 3 temporary file(s) that a killed run left" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        kept + ["checkpoint.npz", "history.csv", "model.npz"]
    )


# -- --threads ---------------------------------------------------------------------------------------
class _Configure:
    """Stands in for fastconv.configure: records the calls and whether the handle was left."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.exited = 0

    def __call__(self, **kwargs):
        self.calls.append(kwargs)

        @contextlib.contextmanager
        def handle():
            yield
            self.exited += 1

        return handle()


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_threads_sets_numba_and_blas_threads_through_configure_for_the_run_only(
    tmp_path, monkeypatch, threads
):
    configure = _Configure()
    monkeypatch.setattr(fastconv, "configure", configure)
    seen = []
    monkeypatch.setattr(trainer, "run", lambda args: seen.append((list(configure.calls), configure.exited)))
    assert fastconv.train.main(["--threads", str(threads), "--out", str(tmp_path), *QUICK]) == 0
    expected = [{"threads": threads}] if threads else []
    assert seen == [(expected, 0)]  # set before the run, restored after it
    assert (configure.calls, configure.exited) == (expected, len(expected))


def test_threads_leaves_the_process_settings_as_they_were(tmp_path, monkeypatch):
    before = fastconv.get_config()
    seen = []
    monkeypatch.setattr(trainer, "run", lambda args: seen.append(fastconv.get_config()["threads"]))
    assert fastconv.train.main(["--threads", "1", "--out", str(tmp_path), *QUICK]) == 0
    assert seen == [1] and fastconv.get_config() == before


# -- the package's lazy exports ------------------------------------------------------------------------
def test_no_module_of_fastconv_train_shadows_a_name_the_package_exports():
    modules = {m.name for m in pkgutil.iter_modules(fastconv.train.__path__)}
    assert modules & (set(fastconv.train.__all__) | set(fastconv.train._LAZY)) == set()


def test_every_lazy_export_of_fastconv_train_is_the_object_not_a_module():
    # A fresh interpreter: whether a submodule shadows a name depends on what was imported before.
    code = (
        "import types, fastconv.testing, fastconv.train as T\n"
        "from fastconv.train import gradcheck, GradcheckError\n"
        "assert gradcheck is fastconv.testing.gradcheck, gradcheck\n"
        "assert GradcheckError is fastconv.testing.GradcheckError\n"
        "for name in [*T._LAZY, *T.__all__]:\n"
        "    first, again = getattr(T, name), getattr(T, name)\n"
        "    assert not isinstance(first, types.ModuleType) and first is again, name\n"
        "from fastconv.train import gradcheck\n"
        "assert gradcheck is fastconv.testing.gradcheck, gradcheck\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
