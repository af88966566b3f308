"""Weights saved before the Keras-style model flattened in Keras's (H, W, C) order are refused, not loaded wrong.

fastconv 0.1 flattened channels_last images in (C, H, W) order, so the first Dense weights of its files
mean something else now; files written since carry a format marker.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fastconv.train._io import load_npz, save_npz_atomic
from fastconv.train.keras import Conv2D, Dense, Flatten, Sequential
from fastconv.train.keras.model import WEIGHTS_FORMAT


def _model(data_format: str = "channels_last") -> Sequential:
    shape = (6, 6, 1) if data_format == "channels_last" else (1, 6, 6)
    model = Sequential(
        [
            Conv2D(3, (3, 3), activation="relu", input_shape=shape, data_format=data_format),
            Flatten(),
            Dense(4, activation="softmax"),
        ],
        backend="numpy",
        seed=1,
    )
    model.build()
    return model


def test_weights_round_trip_with_their_format_marker(tmp_path):
    model = _model()
    path = tmp_path / "w.npz"
    model.save_params(path)
    assert int(load_npz(path)[WEIGHTS_FORMAT]) == 2
    other = _model()
    other.set_weights([np.random.default_rng(0).standard_normal(p.shape) for p in other.params.values()])
    other.load_params(path)
    for k, v in model.params.items():
        np.testing.assert_array_equal(other.params[k], v)


def test_a_channels_last_file_without_the_marker_is_refused(tmp_path):
    model = _model()
    path = tmp_path / "old.npz"
    save_npz_atomic(path, dict(model.params))  # what fastconv 0.1 wrote
    with pytest.raises(ValueError, match=r"old\.npz: weights saved by fastconv before 0\.2.*\(H, W, C\)"):
        model.load_params(path)


def test_a_channels_first_file_without_the_marker_still_loads(tmp_path):
    model = _model("channels_first")  # its flatten order never changed
    path = tmp_path / "old.npz"
    save_npz_atomic(path, dict(model.params))
    model.load_params(path)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="digits needs scikit-learn")
def test_resuming_a_keras_checkpoint_of_fastconv_0_1_is_refused(tmp_path, capsys):
    import json

    import fastconv.train
    from fastconv.train import trainer

    out = tmp_path / "out"
    args = [
        "--model",
        "keras",
        "--dataset",
        "digits",
        "--backend",
        "numpy",
        "--batch-size",
        "64",
        "--no-plots",
    ]
    assert fastconv.train.main(["--epochs", "1", "--out", str(out), *args]) == 0
    ckpt = out / trainer.CHECKPOINT
    z = dict(load_npz(ckpt))
    meta = json.loads(str(z["meta"]))
    meta["version"] = 1
    z["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(ckpt, z)
    assert fastconv.train.main(["--epochs", "2", "--out", str(out), "--resume", *args]) == 2
    assert "written by fastconv before 0.2" in capsys.readouterr().err
