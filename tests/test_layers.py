"""The layers honour the book's ``common/layers.py`` API and drop into its networks; the losses of
:mod:`fastconv.losses` and their gradients; every layer refuses ``backward`` before ``forward``."""

from __future__ import annotations

import gzip
import re
from collections import OrderedDict

import numpy as np
import pytest

import fastconv
from fastconv import losses
from fastconv.layers import (
    Affine,
    BatchNorm2d,
    BatchNormalization,
    Convolution,
    Dropout,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    cross_entropy_error,
    softmax,
)
from fastconv.testing import gradcheck
from fastconv.testing import reference as ref
from fastconv.train import keras


def test_constructors_accept_the_books_arguments_positionally_and_by_keyword(rng):
    W, b = rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2)
    assert Convolution(W, b, 2, 1).stride == 2 and Convolution(W=W, b=b, stride=2, pad=1).pad == 1
    assert Pooling(2, 2).stride == 2  # the book's default stride
    p = Pooling(pool_h=3, pool_w=3, stride=1, pad=1)
    assert (p.pool_h, p.pool_w, p.stride, p.pad) == (3, 3, 1, 1)
    assert Dropout(0.3).dropout_ratio == 0.3 and Dropout(dropout_ratio=0.2).dropout_ratio == 0.2
    bn = BatchNormalization(np.ones(4), np.zeros(4), momentum=0.8, running_mean=None, running_var=None)
    assert bn.momentum == 0.8
    a = Affine(rng.standard_normal((4, 3)), np.zeros(3))
    for layer, attrs in (
        (Convolution(W, b), ("W", "b", "dW", "db", "stride", "pad", "x")),
        (a, ("W", "b", "dW", "db", "x", "original_x_shape")),
        (Relu(), ("mask",)),
        (Sigmoid(), ("out",)),
        (SoftmaxWithLoss(), ("loss", "y", "t")),
        (p, ("pool_h", "pool_w", "stride", "pad")),
    ):
        for attr in attrs:
            assert hasattr(layer, attr), (type(layer).__name__, attr)


@pytest.mark.parametrize("stride, pad", [(1, 0), (2, 1), (1, 2)])
def test_convolution_matches_the_books_layer(on, rng, stride, pad):
    x, W, b = rng.standard_normal((3, 2, 9, 9)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    book = ref.BookConvolution(W, b, stride, pad)
    ours = Convolution(*on(W, b), stride, pad)
    np.testing.assert_allclose(on.host(ours.forward(on(x))), book.forward(x), rtol=1e-10)
    dout = rng.standard_normal(book.forward(x).shape)
    np.testing.assert_allclose(on.host(ours.backward(on(dout))), book.backward(dout), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(on.host(ours.dW), book.dW, rtol=1e-10)
    np.testing.assert_allclose(on.host(ours.db), book.db, rtol=1e-10)


def test_pooling_matches_the_books_layer_including_ties(on, rng):
    x = rng.integers(0, 3, (3, 4, 8, 8)).astype(np.float64)  # small integers: many exact ties, as in MNIST
    book, ours = ref.BookPooling(2, 2, 2), Pooling(2, 2, 2)
    y = on.host(ours.forward(on(x)))
    np.testing.assert_array_equal(y, book.forward(x))
    dout = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(on.host(ours.backward(on(dout))), book.backward(dout))


def test_pooling_has_no_parameters_and_keeps_the_channel_count(on, rng):
    layer = Pooling(3, 3, stride=2, pad=1)
    y = layer.forward(on(rng.standard_normal((2, 5, 9, 9))))
    assert y.shape == (2, 5, 5, 5)
    assert not any(hasattr(layer, a) for a in ("W", "b", "dW", "db"))


def test_pooling_accepts_the_books_transposed_views(on, rng):
    x = rng.standard_normal((2, 6, 6, 3)).transpose(
        0, 3, 1, 2
    )  # non-contiguous, like the book's Pooling output
    np.testing.assert_array_equal(on.host(Pooling(2, 2).forward(on(x))), ref.BookPooling(2, 2).forward(x))


def test_a_first_layer_convolution_skips_dx_and_gives_the_same_parameter_gradients(on, rng):
    x, W, b = rng.standard_normal((3, 1, 9, 9)), rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    dout = rng.standard_normal((3, 4, 7, 7))
    full, first = Convolution(*on(W, b)), Convolution(*on(W, b), need_dx=False)
    full.forward(on(x))
    first.forward(on(x))
    assert full.backward(on(dout)) is not None and first.backward(on(dout)) is None
    np.testing.assert_allclose(on.host(first.dW), on.host(full.dW), rtol=1e-12)
    np.testing.assert_allclose(on.host(first.db), on.host(full.db), rtol=1e-12)


def test_the_networks_first_convolution_computes_no_dx():
    from fastconv.train.keras import mnist_cnn
    from fastconv.train.networks import SimpleConvNet

    assert SimpleConvNet(input_dim=(1, 8, 8), backend="numpy").layers["Conv1"].need_dx is False
    model = mnist_cnn(backend="numpy", seed=0)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    model.build()
    convs = [layer.layer for layer in model.layers if isinstance(getattr(layer, "layer", None), Convolution)]
    assert [c.need_dx for c in convs] == [False] + [True] * (len(convs) - 1)


def test_convolution_accepts_a_scalar_bias_and_gives_a_scalar_db(on, rng):
    x, W = rng.standard_normal((2, 1, 5, 5)), rng.standard_normal((3, 1, 3, 3))
    conv = Convolution(on(W), 0.5)
    y = conv.forward(on(x))
    np.testing.assert_allclose(on.host(y), ref.conv2d(x, W, np.full(3, 0.5)), rtol=1e-10)
    conv.backward(on(np.ones(y.shape)))
    assert np.ndim(on.host(conv.db)) == 0 and float(conv.db) == pytest.approx(y.size)


def test_layers_read_parameters_at_call_time(on, rng):
    # The book's optimizers update params in place; its load_params rebinds layer.W.
    x, W, b = rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2)
    Wd, bd = on(W, b)
    conv = Convolution(Wd, bd)
    y1 = on.host(conv.forward(on(x)))
    Wd[0, 0, 0, 0] += 1.0  # in-place update, as numerical_gradient and optimizers do
    y2 = on.host(conv.forward(on(x)))
    assert not np.allclose(y1, y2)
    conv.W = on(W * 2)  # rebinding, as load_params does
    np.testing.assert_allclose(on.host(conv.forward(on(x))), ref.conv2d(x, W * 2, b), rtol=1e-10)


def test_layers_return_fresh_arrays(on, rng):
    x = on(rng.standard_normal((2, 2, 6, 6)))
    conv = Convolution(*on(rng.standard_normal((2, 2, 3, 3)), rng.standard_normal(2)))
    a = conv.forward(x)
    b = conv.forward(x)
    a[...] = 0
    assert on.host(b).any()
    relu = Relu()
    r = relu.forward(x)
    r[...] = 0
    assert on.host(x).any()


def test_relu_backward_does_not_modify_dout(on, rng):
    relu = Relu()
    relu.forward(on(rng.standard_normal((3, 4))))
    dout = on(rng.standard_normal((3, 4)))
    before = on.host(dout).copy()
    relu.backward(dout)
    np.testing.assert_array_equal(on.host(dout), before)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_relu_gives_the_books_bits_with_nan_signed_zeros_and_infinities(on, rng, dtype):
    """The book's Relu: out = x.copy(); out[x <= 0] = 0, and dout[x <= 0] = 0 (NaN passes, -0.0 becomes +0.0)."""
    special = [np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0, -1.0]
    x = rng.standard_normal((4, 3, 6, 5)).astype(dtype)
    x.ravel()[: len(special)] = special
    dout = rng.standard_normal(x.shape).astype(dtype)
    dout.ravel()[: len(special)] = special[::-1]
    x_view, dout_view = x[:, :, ::2], dout[:, :, ::2]  # non-contiguous inputs too
    want_y, want_dx = x_view.copy(), dout_view.copy()
    want_y[x_view <= 0] = 0
    want_dx[x_view <= 0] = 0
    relu = Relu()
    y = on.host(relu.forward(on(x_view)))
    dx = on.host(relu.backward(on(dout_view)))
    bits = f"uint{np.dtype(dtype).itemsize * 8}"
    np.testing.assert_array_equal(y.view(bits), want_y.view(bits))
    np.testing.assert_array_equal(dx.view(bits), want_dx.view(bits))


def test_affine_flattens_4d_input_and_restores_its_shape(on, rng):
    x = rng.standard_normal((2, 3, 4, 4))
    W, b = rng.standard_normal((48, 5)), rng.standard_normal(5)
    layer = Affine(*on(W, b))
    y = layer.forward(on(x))
    np.testing.assert_allclose(on.host(y), x.reshape(2, -1) @ W + b, rtol=1e-12)
    dx = layer.backward(on(np.ones((2, 5))))
    assert dx.shape == x.shape and layer.dW.shape == W.shape and layer.db.shape == b.shape


def test_softmax_with_loss_takes_indices_or_one_hot_labels(on, rng):
    x = rng.standard_normal((4, 3))
    t = np.array([0, 2, 1, 2])
    a, b = SoftmaxWithLoss(), SoftmaxWithLoss()
    la = float(a.forward(on(x), on(t)))
    lb = float(b.forward(on(x), on(np.eye(3)[t])))
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert la == pytest.approx(lb) == pytest.approx(-np.mean(np.log(p[np.arange(4), t] + 1e-7)))
    np.testing.assert_allclose(on.host(a.backward()), on.host(b.backward()), rtol=1e-12)
    np.testing.assert_allclose(on.host(a.backward()), (p - np.eye(3)[t]) / 4, rtol=1e-10)


def test_dropout_masks_in_training_and_scales_at_test_time(rng):
    layer = Dropout(0.5, rng=np.random.default_rng(1))
    x = rng.standard_normal((200, 50)) + 5
    y = layer.forward(x)
    kept = y != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), kept)
    np.testing.assert_allclose(layer.forward(x, train_flg=False), x * 0.5)


def numerical_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        fp = f()
        a[idx] = old - eps
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("cls, gshape", [(BatchNormalization, (48,)), (BatchNorm2d, (3,))])
def test_batch_normalisation_gradients_match_numerical_gradients(rng, cls, gshape):
    x = rng.standard_normal((4, 3, 4, 4))
    gamma, beta = rng.standard_normal(gshape), rng.standard_normal(gshape)
    R = rng.standard_normal(x.shape)
    layer = cls(gamma, beta)
    y = layer.forward(x)
    assert y.shape == x.shape
    dx = layer.backward(R)

    def loss():
        return float(np.sum(R * cls(gamma, beta).forward(x)))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.dgamma, numerical_grad(loss, gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.dbeta, numerical_grad(loss, beta), rtol=1e-5, atol=1e-7)


def test_batchnorm2d_normalises_each_channel(rng):
    x = rng.standard_normal((8, 3, 5, 5)) * np.array([1, 5, 10]).reshape(1, 3, 1, 1) + 3
    y = BatchNorm2d(np.ones(3), np.zeros(3)).forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-4)


# -- the book's SimpleConvNet, written as the book writes it, on fastconv's layers ----------------


class BookSimpleConvNet:
    """conv - relu - pool - affine - relu - affine - softmax, exactly as the book assembles it."""

    def __init__(
        self,
        input_dim=(1, 28, 28),
        filter_num=8,
        filter_size=5,
        hidden_size=32,
        output_size=10,
        weight_init_std=0.01,
        seed=0,
    ):
        r = np.random.default_rng(seed)
        pool_out = filter_num * ((input_dim[1] - filter_size + 1) // 2) ** 2
        self.params = {
            "W1": weight_init_std * r.standard_normal((filter_num, input_dim[0], filter_size, filter_size)),
            "b1": np.zeros(filter_num),
            "W2": weight_init_std * r.standard_normal((pool_out, hidden_size)),
            "b2": np.zeros(hidden_size),
            "W3": weight_init_std * r.standard_normal((hidden_size, output_size)),
            "b3": np.zeros(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"], 1, 0)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        for i, name in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
            grads[f"W{i}"], grads[f"b{i}"] = self.layers[name].dW, self.layers[name].db
        return grads

    def numerical_gradient(self, x, t, keys):
        return {k: numerical_grad(lambda: self.loss(x, t), self.params[k], eps=1e-4) for k in keys}


def read_mnist(directory, count: int):
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
    with gzip.open(directory / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def test_books_simple_conv_net_gradient_matches_its_numerical_gradient(rng, backend):
    with fastconv.use_backend(backend):
        net = BookSimpleConvNet(
            input_dim=(1, 10, 10), filter_num=3, filter_size=3, hidden_size=6, weight_init_std=0.3
        )
        x = rng.standard_normal((3, 1, 10, 10))
        t = np.array([1, 4, 7])
        grads = net.gradient(x, t)
        numeric = net.numerical_gradient(x, t, ["W1", "b1", "W2", "b3"])
    for key, value in numeric.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-4, atol=1e-7, err_msg=key)


def test_books_simple_conv_net_trains_on_real_mnist(backend, mnist_dir):
    x, t = read_mnist(mnist_dir, 500)  # float32 images into float64 weights, as in the book
    with fastconv.use_backend(backend):
        net = BookSimpleConvNet(seed=1, weight_init_std=0.1)
        first = float(net.loss(x, t))
        for step in range(40):
            batch = slice((step * 50) % 500, (step * 50) % 500 + 50)
            grads = net.gradient(x[batch], t[batch])
            for key in net.params:  # the book's SGD: in-place update of the arrays the layers hold
                net.params[key] -= 0.3 * grads[key]
        last = float(net.loss(x, t))
    assert last < 0.5 * first, (first, last)


# -- losses --------------------------------------------------------------------------------------------
def test_softmax_and_cross_entropy_error_give_the_books_numbers(rng):
    x = rng.standard_normal((5, 4)) * 3
    t = rng.integers(0, 4, 5)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(softmax(x), y)
    book = -np.sum(np.log(y[np.arange(5), t] + 1e-7)) / 5
    assert cross_entropy_error(y, t) == book == cross_entropy_error(y, np.eye(4)[t])
    assert cross_entropy_error(y[0], np.eye(4)[t[0]]) == -np.log(y[0, t[0]] + 1e-7)  # one sample, as the book
    assert SoftmaxWithLoss().forward(x, t) == book


@pytest.mark.parametrize("sparse", [True, False])
def test_keras_cross_entropy_clips_probabilities_and_takes_labels_or_one_hot_rows(rng, sparse):
    y = softmax(rng.standard_normal((6, 3)))
    y[0] = [1.0, 0.0, 0.0]  # log(0) and log(1) are clipped to log(1e-7) and log(1 - 1e-7)
    t = np.array([1, 0, 2, 2, 1, 0])
    clipped = np.clip(y, 1e-7, 1 - 1e-7)
    expected = -np.mean(np.log(clipped[np.arange(6), t]))
    assert losses.cross_entropy(y, t if sparse else np.eye(3)[t]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("target", ["labels", "one-hot", "soft"])
def test_cross_entropy_gradients_match_central_differences(rng, target):
    x = rng.standard_normal((4, 5))
    labels = rng.integers(0, 5, 4)
    t = {"labels": labels, "one-hot": np.eye(5)[labels], "soft": softmax(rng.standard_normal((4, 5)))}[target]

    def keras_loss(y):
        return losses.cross_entropy(y, t)

    gradcheck(
        keras_loss,
        softmax(x),
        analytic=lambda d, y: [d * losses.cross_entropy_backward(y, t)],
        rtol=1e-6,
    )
    gradcheck(
        lambda x: losses.cross_entropy(softmax(x), t),
        x,
        analytic=lambda d, x: [d * losses.softmax_cross_entropy_backward(softmax(x), t)],
        rtol=1e-5,
    )


def test_softmax_and_mean_squared_error_gradients_match_central_differences(rng):
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    gradcheck(softmax, x, analytic=lambda d, x: [losses.softmax_backward(d, softmax(x))], rtol=1e-6)
    gradcheck(
        lambda y: losses.mean_squared_error(y, t),
        x,
        analytic=lambda d, y: [d * losses.mean_squared_error_backward(y, t)],
        rtol=1e-6,
    )


# -- backward before forward ---------------------------------------------------------------------------
def _built(layer, in_shape):
    layer.build(in_shape, np.random.default_rng(0), np.dtype(np.float64), None)
    return layer


# (label in the message, the forward call it names, layer factory, dout shape)
OUT_OF_ORDER = [
    ("Relu", "forward(x)", lambda r: Relu(), (2, 3)),
    ("Sigmoid", "forward(x)", lambda r: Sigmoid(), (2, 3)),
    ("Affine", "forward(x)", lambda r: Affine(r.standard_normal((4, 3)), r.standard_normal(3)), (2, 3)),
    (
        "Convolution",
        "forward(x)",
        lambda r: Convolution(r.standard_normal((2, 1, 3, 3)), r.standard_normal(2)),
        (2, 2, 3, 3),
    ),
    ("Pooling", "forward(x)", lambda r: Pooling(2, 2), (2, 1, 2, 2)),
    (
        "BatchNormalization",
        "forward(x, train_flg=True)",
        lambda r: BatchNormalization(r.standard_normal(3) + 1, r.standard_normal(3)),
        (2, 3),
    ),
    (
        "BatchNorm2d",
        "forward(x, train_flg=True)",
        lambda r: BatchNorm2d(r.standard_normal(2) + 1, r.standard_normal(2)),
        (2, 2, 3, 3),
    ),
    ("Dropout", "forward(x, train_flg=True)", lambda r: Dropout(0.5), (2, 3)),
    ("SoftmaxWithLoss", "forward(x, t)", lambda r: SoftmaxWithLoss(), (2, 3)),
    (
        "'c' (Conv2D)",
        "forward(x, training)",
        lambda r: _built(keras.Conv2D(2, 3, activation="relu", name="c"), (1, 5, 5)),
        (2, 2, 3, 3),
    ),
    (
        "'p' (MaxPooling2D)",
        "forward(x, training)",
        lambda r: _built(keras.MaxPooling2D(2, name="p"), (1, 4, 4)),
        (2, 1, 2, 2),
    ),
    ("'f' (Flatten)", "forward(x, training)", lambda r: _built(keras.Flatten(name="f"), (1, 2, 2)), (2, 4)),
    (
        "'d' (Dense)",
        "forward(x, training)",
        lambda r: _built(keras.Dense(3, activation="softmax", name="d"), (4,)),
        (2, 3),
    ),
    ("'r' (Dropout)", "forward(x, training)", lambda r: _built(keras.Dropout(0.5, name="r"), (4,)), (2, 4)),
    (
        "'a' (Activation)",
        "forward(x, training)",
        lambda r: _built(keras.Activation("sigmoid", name="a"), (4,)),
        (2, 4),
    ),
]


@pytest.mark.parametrize(
    "label, call, make, dout_shape",
    OUT_OF_ORDER,
    ids=[case[0] if "(" not in case[0] else "keras." + case[0].split("(")[1][:-1] for case in OUT_OF_ORDER],
)
def test_backward_before_forward_raises_an_error_naming_the_layer(rng, label, call, make, dout_shape):
    layer = make(rng)
    expected = f"{label}: backward() was called before forward(): backward needs what forward saves; call {call} first"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        layer.backward(rng.standard_normal(dout_shape))
