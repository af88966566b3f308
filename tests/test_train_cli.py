"""`fastconv train` end to end on the digits set: outputs, plots, checkpoints and exact resume."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest

import fastconv.train
from fastconv.cli import main as fastconv_main
from fastconv.train.trainer import load_checkpoint

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="digits needs scikit-learn"),
]

QUICK = ["--backend", "numpy", "--no-progress", "--batch-size", "64"]


def _history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fastconv_train_writes_history_plots_model_and_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
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


def test_resume_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "run")
    assert fastconv.train.main(["--epochs", "1", "--out", out, "--no-plots", *QUICK]) == 0
    assert fastconv.train.main(["--epochs", "1", "--out", out, "--resume", "--no-plots", *QUICK]) == 0  # done
    with pytest.raises(SystemExit, match=r"lr 0\.003 \(now 0\.01\)"):
        fastconv.train.main(["--epochs", "2", "--out", out, "--resume", "--lr", "0.01", "--no-plots", *QUICK])


def test_resume_without_a_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        fastconv.train.main(["--out", str(tmp_path / "nothing"), "--resume", *QUICK])


def test_train_reports_a_missing_mnist_directory_as_an_error(tmp_path, capsys):
    code = fastconv.train.main(
        ["--dataset", "mnist", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *QUICK]
    )
    assert code == 2
    assert "MNIST files missing" in capsys.readouterr().err
