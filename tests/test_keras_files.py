"""Keras 3 files both ways: a model trained in Keras (torch backend) runs in fastconv with the same
predictions, and fastconv's weights go back into Keras.

The tests that need Keras skip where it (or PyTorch, its backend here) is not installed; CI installs both.
Predictions are compared within 1e-5 (absolute, on softmax outputs): both sides compute in float32, with
different summation orders.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fastconv.train.keras import (
    Activation,
    AveragePooling2D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    MaxPooling2D,
    SeparableConv2D,
    Sequential,
    load_model,
    mnist_cnn,
)

h5py = pytest.importorskip("h5py")

TOL = 1e-5


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on its torch backend (PyTorch CPU as the engine), or a skip."""
    pytest.importorskip("torch")
    if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("KERAS_BACKEND is set to another backend than torch")
    k = pytest.importorskip("keras")
    if not k.__version__.startswith("3.") or k.backend.backend() != "torch":
        pytest.skip(f"needs Keras 3 on torch, got Keras {k.__version__} on {k.backend.backend()}")
    return k


def _images(rng, n=64, shape=(28, 28, 1)):
    return rng.random((n, *shape), dtype=np.float32)


def _keras_seed_net(keras, padding="valid"):
    """The seed's network (fastconv's mnist_cnn) in Keras."""
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, (3, 3), activation="relu", padding=padding),
            L.MaxPooling2D((2, 2)),
            L.Conv2D(64, (3, 3), activation="relu", padding=padding),
            L.MaxPooling2D((2, 2)),
            L.Conv2D(64, (3, 3), activation="relu", padding=padding),
            L.Flatten(),
            L.Dense(64, activation="relu"),
            L.Dense(10, activation="softmax"),
        ]
    )


def _train_in_keras(keras, model, x, rng, steps=4):
    keras.utils.set_random_seed(0)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0)
    return model


def _same_predictions(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max()
    assert err <= tol, f"predictions differ by {err:.3g} (> {tol})"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- the seed's network, trained in Keras, both ways ----------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_keras_trained_seed_network_round_trips_through_fastconv(keras, backend, tmp_path, padding):
    rng = np.random.default_rng(7)
    x = _images(rng)
    km = _train_in_keras(keras, _keras_seed_net(keras, padding), x, rng)
    km.save_weights(tmp_path / "keras.weights.h5")
    expected = km.predict(x, verbose=0)

    fm = mnist_cnn(padding=padding, backend=backend)
    before = _digest(tmp_path / "keras.weights.h5")
    fm.load_weights(tmp_path / "keras.weights.h5")
    assert _digest(tmp_path / "keras.weights.h5") == before  # the file is only read
    _same_predictions(fm.predict(x, batch_size=32), expected)

    # fine-tune in fastconv, then back into Keras: Keras predicts what fastconv predicts
    fm.compile(optimizer="adam", loss="categorical_crossentropy")
    t = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(x))]
    fm.fit(x, t, batch_size=32, epochs=1, verbose=0)
    tuned = fm.predict(x, batch_size=32)
    assert np.abs(tuned - expected).max() > 1e-4  # the step changed the weights
    fm.save_weights(tmp_path / "tuned.weights.h5")
    km2 = _keras_seed_net(keras, padding)
    km2.load_weights(tmp_path / "tuned.weights.h5")
    _same_predictions(km2.predict(x, verbose=0), tuned)
    km2.save_weights(tmp_path / "resaved.weights.h5")
    assert _h5_arrays(tmp_path / "resaved.weights.h5") == _h5_arrays(tmp_path / "tuned.weights.h5")


def _h5_arrays(path):
    """{dataset path: its bytes and shape} of a weights file, to compare files bit for bit."""
    out = {}
    with h5py.File(path, "r") as h5:
        h5["layers"].visititems(
            lambda name, obj: (
                out.__setitem__(name, (obj.shape, obj[...].tobytes())) if hasattr(obj, "shape") else None
            )
        )
    return out


def test_keras_model_file_loads_as_a_fastconv_model_and_back(keras, tmp_path):
    rng = np.random.default_rng(8)
    x = _images(rng)
    km = _train_in_keras(keras, _keras_seed_net(keras), x, rng)
    km.save(tmp_path / "seed.keras")
    fm = load_model(tmp_path / "seed.keras", backend="numba")
    assert [type(layer).__name__ for layer in fm.layers] == [type(layer).__name__ for layer in km.layers]
    assert fm.dtype == np.float32
    _same_predictions(fm.predict(x), km.predict(x, verbose=0))
    # the weights inside a .keras file also load into a model built in code
    fm2 = mnist_cnn(backend="numpy")
    fm2.load_weights(tmp_path / "seed.keras")
    _same_predictions(fm2.predict(x), km.predict(x, verbose=0))

    fm.save(tmp_path / "back.keras")
    km2 = keras.models.load_model(tmp_path / "back.keras")
    _same_predictions(km2.predict(x, verbose=0), fm.predict(x))
    assert [layer.name for layer in km2.layers] == [layer.name for layer in km.layers]


def _keras_family(keras, data_format="channels_last"):
    """Every layer type fastconv's Sequential has, in one Keras model."""
    L = keras.layers
    cl = data_format == "channels_last"
    kw = {"data_format": data_format}
    return keras.Sequential(
        [
            keras.Input((12, 12, 4) if cl else (4, 12, 12)),
            L.Conv2D(8, 3, padding="same", groups=2, activation="relu", **kw),
            L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", **kw),
            L.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", **kw),
            L.Conv2DTranspose(5, 2, strides=2, activation="sigmoid", **kw),
            L.AveragePooling2D(2, **kw),
            L.Conv2D(6, (3, 2), dilation_rate=(1, 2), use_bias=False, **kw),
            L.MaxPooling2D((2, 2), strides=(2, 1), padding="same", **kw),
            L.Flatten(),
            L.Dropout(0.25),
            L.Dense(7),
            L.Activation("relu"),
            L.Dense(3, activation="softmax"),
        ]
    )


def _fastconv_family(data_format="channels_last", backend=None):
    cl = data_format == "channels_last"
    kw = {"data_format": data_format}
    return Sequential(
        [
            Conv2D(
                8,
                3,
                padding="same",
                groups=2,
                activation="relu",
                input_shape=(12, 12, 4) if cl else (4, 12, 12),
                **kw,
            ),
            DepthwiseConv2D(3, depth_multiplier=2, activation="relu", **kw),
            SeparableConv2D(6, 3, depth_multiplier=2, padding="same", **kw),
            Conv2DTranspose(5, 2, strides=2, activation="sigmoid", **kw),
            AveragePooling2D(2, **kw),
            Conv2D(6, (3, 2), dilation_rate=(1, 2), use_bias=False, **kw),
            MaxPooling2D((2, 2), strides=(2, 1), padding="same", **kw),
            Flatten(),
            Dropout(0.25),
            Dense(7),
            Activation("relu"),
            Dense(3, activation="softmax"),
        ],
        backend=backend,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_every_layer_type_round_trips(keras, backend, tmp_path, data_format):
    rng = np.random.default_rng(9)
    shape = (12, 12, 4) if data_format == "channels_last" else (4, 12, 12)
    x = rng.standard_normal((16, *shape)).astype(np.float32)
    km = _keras_family(keras, data_format)
    # random weights everywhere (Keras initialises biases to zero, which would hide a bias mix-up)
    km.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in km.get_weights()])
    km.save_weights(tmp_path / "family.weights.h5")
    fm = _fastconv_family(data_format, backend)
    fm.load_weights(tmp_path / "family.weights.h5")
    expected = km.predict(x, verbose=0)
    _same_predictions(fm.predict(x), expected)

    fm.save_weights(tmp_path / "back.weights.h5")
    km2 = _keras_family(keras, data_format)
    km2.load_weights(tmp_path / "back.weights.h5")
    for a, b in zip(km.get_weights(), km2.get_weights()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    fm.save(tmp_path / "family.keras")
    km3 = keras.models.load_model(tmp_path / "family.keras")
    _same_predictions(km3.predict(x, verbose=0), expected)
    fm3 = load_model(tmp_path / "family.keras", backend=backend)
    _same_predictions(fm3.predict(x), expected)


# -- without Keras: the file layout, round trips, errors ------------------------------------------------
def _built(model):
    model.build()
    rng = np.random.default_rng(3)
    model.set_weights([rng.standard_normal(p.shape) for p in model.params.values()])
    return model


def test_weights_file_has_keras_layout(tmp_path):
    fm = _built(_fastconv_family(backend="numpy"))
    fm.save_weights(tmp_path / "w.weights.h5")
    with h5py.File(tmp_path / "w.weights.h5", "r") as h5:
        groups = sorted(h5["layers"])
        assert groups == sorted(
            [
                "conv2d",
                "depthwise_conv2d",
                "separable_conv2d",
                "conv2d_transpose",
                "average_pooling2d",
                "conv2d_1",
                "max_pooling2d",
                "flatten",
                "dropout",
                "dense",
                "activation",
                "dense_1",
            ]
        )
        assert h5["layers/conv2d_1/vars"].attrs["name"] == fm.layers[5].name
        assert list(h5["layers/conv2d_1/vars"]) == ["0"]  # no bias
        assert h5["layers/conv2d/vars/0"].shape == (3, 3, 2, 8)  # (kh, kw, C // groups, filters)
        assert h5["layers/depthwise_conv2d/vars/0"].shape == (3, 3, 8, 2)  # (kh, kw, C, multiplier)
        assert h5["layers/separable_conv2d/vars/1"].shape == (1, 1, 32, 6)  # (1, 1, C * m, filters)
        assert h5["layers/conv2d_transpose/vars/0"].shape == (2, 2, 5, 6)  # (kh, kw, filters, C)
        np.testing.assert_array_equal(h5["layers/dense/vars/0"], fm.params[f"{fm.layers[9].name}.W"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fastconv_round_trip_is_exact(tmp_path, suffix, data_format):
    fm = _built(_fastconv_family(data_format, backend="numpy"))
    path = tmp_path / f"m{suffix}"
    fm.save_weights(path)
    other = _fastconv_family(data_format, backend="numpy")
    other.load_weights(path)
    for a, b in zip(fm.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    if suffix == ".keras":
        again = load_model(path, backend="numpy")
        for a, b in zip(fm.get_weights(), again.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert [layer.name for layer in again.layers] == [layer.name for layer in fm.layers]
        assert again.data_format == data_format


def test_a_depthwise_output_channel_keeps_its_kernel(tmp_path):
    """Output channel c*m + k of fastconv's depthwise kernel is Keras' kernel[:, :, c, k]."""
    fm = _built(Sequential([DepthwiseConv2D(3, depth_multiplier=3, input_shape=(5, 5, 2))], backend="numpy"))
    fm.save_weights(tmp_path / "d.weights.h5")
    W = fm.get_weights()[0]
    with h5py.File(tmp_path / "d.weights.h5", "r") as h5:
        k = h5["layers/depthwise_conv2d/vars/0"][...]
    for c in range(2):
        for m in range(3):
            np.testing.assert_array_equal(k[:, :, c, m], W[c * 3 + m, 0])


def test_a_layer_the_model_lacks_is_named(tmp_path):
    fm = _built(Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)], backend="numpy"))
    fm.save_weights(tmp_path / "w.weights.h5")
    with h5py.File(tmp_path / "w.weights.h5", "a") as h5:
        g = h5.create_group("layers/batch_normalization/vars")
        g.attrs["name"] = "bn0"
        for i in range(4):
            g.create_dataset(str(i), data=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"layers this model does not: 'bn0' \(layers/batch_normalization"):
        fm.load_weights(tmp_path / "w.weights.h5")


def test_a_shape_mismatch_names_the_layer_and_loads_nothing(tmp_path):
    fm = _built(Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)], backend="numpy"))
    fm.save_weights(tmp_path / "w.weights.h5")
    other = _built(
        Sequential([Conv2D(5, 3, input_shape=(8, 8, 1), name="c"), Flatten(), Dense(2)], backend="numpy")
    )
    before = other.get_weights()
    with pytest.raises(
        ValueError, match=r"layer 'c' \(Conv2D, layers/conv2d.*kernel has shape \(3, 3, 1, 4\)"
    ):
        other.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_layers_and_bias_differences_are_named(tmp_path):
    small = _built(Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)], backend="numpy"))
    small.save_weights(tmp_path / "w.weights.h5")
    bigger = _built(
        Sequential(
            [Conv2D(4, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2), Dense(2, name="d2")], backend="numpy"
        )
    )
    with pytest.raises(ValueError, match=r"no weights for the model's layers 'd2' \(layers/dense_1\)"):
        bigger.load_weights(tmp_path / "w.weights.h5")
    nobias = _built(
        Sequential(
            [Conv2D(4, 3, input_shape=(8, 8, 1), use_bias=False), Flatten(), Dense(2)], backend="numpy"
        )
    )
    with pytest.raises(ValueError, match=r"has 2 variables, the model's layer has 1 \(kernel\)"):
        nobias.load_weights(tmp_path / "w.weights.h5")


def test_damaged_or_foreign_files_get_clear_errors(tmp_path):
    fm = _built(Sequential([Dense(2, input_shape=(3,))], backend="numpy"))
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match=r"junk\.weights\.h5: not a readable HDF5 weights file"):
        fm.load_weights(tmp_path / "junk.weights.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.create_dataset("x", data=np.ones(3))
    with pytest.raises(ValueError, match=r"no 'layers' group: not a Keras 3 weights file"):
        fm.load_weights(tmp_path / "other.h5")
    (tmp_path / "junk.keras").write_bytes(b"PK but not")
    with pytest.raises(ValueError, match=r"junk\.keras: not a \.keras file"):
        fm.load_weights(tmp_path / "junk.keras")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ValueError, match=r"no model\.weights\.h5 inside \(it holds config\.json\)"):
        fm.load_weights(tmp_path / "empty.keras")
    with pytest.raises(ValueError, match=r"the model is a None; fastconv rebuilds Sequential models only"):
        load_model(tmp_path / "empty.keras")
    with pytest.raises(ValueError, match=r"load_model reads \.keras files"):
        load_model(tmp_path / "other.h5")
    with pytest.raises(ValueError, match=r"save writes \.keras files"):
        fm.save(tmp_path / "x.h5")


def test_load_model_names_a_layer_fastconv_lacks(keras, tmp_path):
    L = keras.layers
    km = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(2, 3), L.BatchNormalization(name="bn"), L.Flatten()]
    )
    km.save(tmp_path / "bn.keras")
    with pytest.raises(ValueError, match=r"layer 'bn' \(BatchNormalization\): fastconv has no such layer"):
        load_model(tmp_path / "bn.keras")
    fm = _built(Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten()], backend="numpy"))
    with pytest.raises(ValueError, match=r"'bn' \(layers/batch_normalization, 4 variables\)"):
        fm.load_weights(tmp_path / "bn.keras")
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, L.Dense(2)(inputs))
    functional.save(tmp_path / "f.keras")
    with pytest.raises(ValueError, match=r"the model is a 'Functional'"):
        load_model(tmp_path / "f.keras")
    # its weights still load into the same layers built in fastconv (Keras names the input layer too)
    fm2 = Sequential([Dense(2, input_shape=(4,))], backend="numpy")
    fm2.load_weights(tmp_path / "f.keras")
    np.testing.assert_array_equal(fm2.get_weights()[0], np.asarray(functional.get_weights()[0]))


def test_importing_the_keras_api_does_not_import_h5py():
    code = "import sys, fastconv.train.keras; assert 'h5py' not in sys.modules, 'h5py imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
