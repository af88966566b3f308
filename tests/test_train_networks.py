"""SimpleConvNet and the Keras-style Sequential: shapes, gradients, parameter files, summary()."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastconv
from fastconv.testing import GradcheckError, gradcheck
from fastconv.train.keras import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Sequential, mnist_cnn
from fastconv.train.networks import SimpleConvNet

SMALL_CONV = {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1}


def _small_net(backend: str | None = None, dtype=np.float64) -> SimpleConvNet:
    return SimpleConvNet((2, 6, 6), SMALL_CONV, 7, 4, "he", backend=backend, dtype=dtype, rng=0)


def test_simple_conv_net_has_the_books_default_shapes():
    net = SimpleConvNet(rng=0)
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {
        "W1": (30, 1, 5, 5),
        "b1": (30,),
        "W2": (4320, 100),
        "b2": (100,),
        "W3": (100, 10),
        "b3": (10,),
    }
    assert net.params["W1"].dtype == np.float64
    assert 0.005 < net.params["W1"].std() < 0.015  # weight_init_std=0.01
    assert net.predict(np.random.default_rng(0).random((3, 1, 28, 28))).shape == (3, 10)


def test_simple_conv_net_gradient_matches_central_differences(backend, rng):
    net = _small_net(backend)
    x = fastconv.to_device(rng.random((4, 2, 6, 6)), backend=backend)
    t = fastconv.to_device(np.array([0, 3, 1, 2]), backend=backend)
    result = gradcheck(net, x, t, max_elements=40)
    assert set(result.errors) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    assert max(result.errors.values()) < 1e-4


def test_simple_conv_net_numerical_gradient_agrees_with_backprop(rng):
    net = SimpleConvNet(
        (1, 4, 4), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}, 3, 3, "he", rng=1
    )
    x, t = rng.random((2, 1, 4, 4)), np.array([2, 0])
    num, ana = net.numerical_gradient(x, t), net.gradient(x, t)
    for k in net.params:
        np.testing.assert_allclose(num[k], ana[k], rtol=1e-4, atol=1e-6)


def test_accuracy_counts_the_last_partial_batch(rng):
    net = _small_net()
    x, t = rng.random((7, 2, 6, 6)), rng.integers(0, 4, 7)
    expected = np.mean(net.predict(x).argmax(axis=1) == t)
    assert net.accuracy(x, t, batch_size=3) == pytest.approx(expected)
    assert net.accuracy(x, np.eye(4)[t], batch_size=100) == pytest.approx(expected)


def test_parameters_round_trip_through_an_npz_file_in_place(tmp_path, rng):
    a, b = _small_net(), SimpleConvNet((2, 6, 6), SMALL_CONV, 7, 4, "he", rng=5)
    held = b.layers["Conv1"].W
    a.save_params(tmp_path / "p.npz")
    b.load_params(tmp_path / "p.npz")
    assert b.layers["Conv1"].W is held  # loaded into the same arrays the layers hold
    x = rng.random((3, 2, 6, 6))
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # the temporary file is gone


def test_a_pickle_is_refused_as_a_parameter_file(tmp_path):
    net = _small_net()
    path = tmp_path / "params.npz"
    path.write_bytes(pickle.dumps({k: np.asarray(v) for k, v in net.params.items()}))
    with pytest.raises(ValueError, match="pickle"):
        net.load_params(path)


def test_an_npz_holding_an_object_array_is_refused(tmp_path):
    net = _small_net()
    arrays = {k: np.asarray(v) for k, v in net.params.items()}
    arrays["W1"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(ValueError, match="refused"):
        net.load_params(tmp_path / "p.npz")


def test_parameter_file_with_wrong_shapes_or_names_is_refused(tmp_path):
    net = _small_net()
    arrays = {k: np.asarray(v) for k, v in net.params.items()}
    np.savez(tmp_path / "shape.npz", **{**arrays, "W2": np.zeros((5, 7))})
    with pytest.raises(ValueError, match=r"'W2' has shape \(5, 7\), the model needs \(27, 7\)"):
        net.load_params(tmp_path / "shape.npz")
    del arrays["b3"]
    np.savez(tmp_path / "names.npz", **arrays, extra=np.zeros(2))
    with pytest.raises(ValueError, match=r"missing \['b3'\], unexpected \['extra'\]"):
        net.load_params(tmp_path / "names.npz")


# -- Keras-style ----------------------------------------------------------------------------------
def test_summary_prints_keras_output_shapes_and_exact_parameter_counts(capsys):
    mnist_cnn().summary()
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "(None," in line]
    shapes = [" ".join(r[2:-1]) for r in rows]
    counts = [int(r[-1]) for r in rows]
    assert counts == [320, 0, 18496, 0, 36928, 0, 36928, 650]
    assert shapes == [
        "(None, 26, 26, 32)",
        "(None, 13, 13, 32)",
        "(None, 11, 11, 64)",
        "(None, 5, 5, 64)",
        "(None, 3, 3, 64)",
        "(None, 576)",
        "(None, 64)",
        "(None, 10)",
    ]
    assert [r[0] for r in rows] == [
        "conv2d",
        "max_pooling2d",
        "conv2d_1",
        "max_pooling2d_1",
        "conv2d_2",
        "flatten",
        "dense",
        "dense_1",
    ]
    assert "Total params: 93,322" in out and "Trainable params: 93,322" in out


def test_sequential_accepts_channels_last_and_channels_first_images_alike(rng):
    model = mnist_cnn(seed=0)
    x_nhwc = rng.random((3, 28, 28, 1)).astype(np.float32)
    p_last = model.predict(x_nhwc)
    np.testing.assert_array_equal(p_last, model.predict(x_nhwc.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(p_last, model.predict(x_nhwc[..., 0]))
    np.testing.assert_allclose(p_last.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        model.predict(rng.random((3, 27, 28, 1)))


def test_glorot_uniform_initial_weights_stay_within_the_keras_limit():
    model = mnist_cnn(seed=0)
    model.build()
    limit = np.sqrt(6.0 / (32 * 9 + 64 * 9))
    w = model.params["conv2d_1.W"]
    assert w.shape == (64, 32, 3, 3) and np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    assert not model.params["conv2d_1.b"].any()


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_sequential_gradient_matches_central_differences(loss, backend, rng):
    model = Sequential(
        [
            Conv2D(3, (3, 3), activation="relu", input_shape=(6, 6, 2)),
            MaxPooling2D((2, 2)),
            Conv2D(4, (3, 3), activation="sigmoid", padding="same"),
            Flatten(),
            Dense(5, activation="relu"),
            Dense(3, activation="softmax"),
        ],
        dtype=np.float64,
        seed=0,
        backend=backend,
    )
    model.compile("adam", loss=loss)
    x = fastconv.to_device(rng.random((4, 2, 6, 6)), backend=backend)
    y = np.eye(3)[[0, 2, 1, 2]]
    result = gradcheck(model, x, y, max_elements=40)
    assert len(result.errors) == 8 and max(result.errors.values()) < 1e-4


def test_fit_lowers_the_loss_and_evaluate_reports_loss_and_accuracy(rng):
    centers = rng.normal(size=(3, 4, 4, 1))
    labels = rng.integers(0, 3, 90)
    x = (centers[labels] + 0.3 * rng.normal(size=(90, 4, 4, 1))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels]
    model = Sequential(
        [
            Conv2D(4, 3, activation="relu", padding="same", input_shape=(4, 4, 1)),
            Flatten(),
            Dropout(0.2),
            Dense(3, activation="softmax"),
        ],
        seed=1,
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=25, batch_size=16, validation_data=(x, y), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    loss, acc = model.evaluate(x, y)
    assert acc > 0.9 and loss == pytest.approx(history.history["val_loss"][-1], rel=1e-5)


def test_gradcheck_catches_a_wrong_gradient(rng):
    net = _small_net()
    x, t = rng.random((3, 2, 6, 6)), np.array([0, 1, 2])
    right = net.loss_and_gradient

    def wrong(x, t):
        loss, grads, y = right(x, t)
        return loss, {**grads, "W2": grads["W2"] * 1.01}, y

    net.loss_and_gradient = wrong
    with pytest.raises(GradcheckError, match="W2") as info:
        gradcheck(net, x, t, max_elements=20)
    assert info.value.result.failed == ["W2"]


def test_gradcheck_checks_a_layer_and_a_function(rng):
    from fastconv.layers import Convolution

    W, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 5, 5))
    res = gradcheck(Convolution(W, b, stride=2, pad=1), x, rtol=1e-6)
    assert set(res.errors) == {"x", "W", "b"}
    res = gradcheck(
        lambda x, W: fastconv.conv2d(x, W, dilation=2),
        x,
        W,
        analytic=lambda d, x, W: fastconv.conv2d_backward(d, x, W, dilation=2)[:2],
        rtol=1e-6,
    )
    assert set(res.errors) == {"input0", "input1"}


def test_gradcheck_needs_a_float64_network():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(_small_net(dtype=np.float32), np.zeros((1, 2, 6, 6)), np.array([0]))


def test_dropout_scales_kept_units_in_training_and_is_the_identity_at_inference(rng):
    drop = Dropout(0.25, seed=0)
    drop.rng = np.random.default_rng(0)
    x = rng.random((200, 50)) + 1.0
    y = drop.forward(x, training=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), kept / 0.75)
    np.testing.assert_array_equal(drop.forward(x, training=False), x)


def test_gradcheck_is_exported_as_fastconv_gradcheck():
    assert fastconv.gradcheck is gradcheck


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path):
    from fastconv.train._io import atomic_write

    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"previous")

    def crash(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy", "mse"])
def test_sequential_trains_and_evaluates_with_the_same_loss(loss, rng):
    from fastconv import losses

    model = Sequential(
        [Flatten(input_shape=(3, 3, 1)), Dense(4, activation="softmax")], dtype=np.float64, seed=0
    )
    model.compile("sgd", loss=loss)
    x = rng.random((6, 3, 3, 1))
    labels = rng.integers(0, 4, 6)
    y = labels if loss.startswith("sparse") else np.eye(4)[labels]
    train_loss, _, probs = model.loss_and_gradient(model._to_nchw(x), model._targets(y))
    np.testing.assert_allclose(probs, model.predict(x), rtol=1e-12)
    keras_loss = losses.mean_squared_error if loss == "mse" else losses.cross_entropy
    assert train_loss == model.loss(x, y) == pytest.approx(float(keras_loss(probs, y)), rel=1e-12)
