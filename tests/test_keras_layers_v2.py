"""The Keras-style layers of the conv family v2 (fastconv.train.keras): Conv2D with groups, DepthwiseConv2D,
SeparableConv2D, Conv2DTranspose, AveragePooling2D, GlobalAveragePooling2D and the data formats, against
torch in float64 and against Keras 3 itself (KERAS_BACKEND=torch) where it is installed."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import numpy as np
import pytest

import fastconv
from fastconv.testing import gradcheck
from fastconv.train.keras import (
    AveragePooling2D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    DepthwiseConv2D,
    Flatten,
    GlobalAveragePooling2D,
    MaxPooling2D,
    SeparableConv2D,
    Sequential,
)
from fastconv.train.optimizers import make_optimizer

torch = pytest.importorskip("torch")
tf = torch.nn.functional

FORMATS = ("channels_last", "channels_first")


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on its torch backend, or a skip where it is not installed (or runs another backend)."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    saved = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is imported
    try:
        import keras
    except Exception as e:  # a broken install: nothing to compare with
        pytest.skip(f"keras does not import: {e}")
    finally:
        if saved is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = saved
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs the {keras.backend.backend()} backend here, not torch")
    return keras


# -- helpers -----------------------------------------------------------------------------------------
def built(layer, in_shape_chw, data_format="channels_last", seed=0, dtype=np.float64):
    """``layer`` built for one (C, H, W) image in ``data_format``, weights drawn from ``seed``; biases are
    made non-zero so that they are checked too."""
    layer.build(tuple(in_shape_chw), np.random.default_rng(seed), np.dtype(dtype), None, data_format)
    for k, p in layer.params.items():
        if k == "b":
            p[...] = np.random.default_rng(seed + 1).standard_normal(p.shape)
    return layer


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def tf_same(size, k, s, d=1):
    """TensorFlow's "same" padding of one axis, (before, after): written out here, not taken from fastconv."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def torch_conv_same(x_nchw, W, b, stride, groups=1, dilation=(1, 1)):
    """conv2d with TensorFlow's "same" padding, in torch: x padded explicitly, then conv2d with no padding."""
    (top, bottom), (left, right) = (
        tf_same(x_nchw.shape[2], W.shape[2], stride[0], dilation[0]),
        tf_same(x_nchw.shape[3], W.shape[3], stride[1], dilation[1]),
    )
    xp = tf.pad(t(x_nchw), (left, right, top, bottom))
    return tf.conv2d(xp, t(W), None if b is None else t(b), stride, 0, dilation, groups).numpy()


def to_keras_conv_kernel(W):
    """fastconv's (F, C // groups, kh, kw) as Keras' Conv2D kernel (kh, kw, C // groups, F)."""
    return W.transpose(2, 3, 1, 0)


def to_keras_depthwise_kernel(W, c):
    """fastconv's depthwise (C * m, 1, kh, kw) (output c*m + k: channel c's k-th kernel) as Keras' (kh, kw, C, m)."""
    return W.reshape(c, -1, *W.shape[2:]).transpose(2, 3, 0, 1)


def keras_run(keras, layer, x):
    """A Keras layer (or model) called on x, as a NumPy array (its torch backend returns a tensor)."""
    return layer(t(x)).detach().cpu().numpy()  # a float64 tensor: Keras keeps its dtype


# -- padding="same" ------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(7, 8), (6, 5)])
def test_conv2d_same_padding_is_tensorflows_for_even_and_odd_kernels_and_any_stride(rng, k, stride, hw):
    layer = built(Conv2D(3, (k, k), stride, "same"), (2, *hw))
    assert layer.out_shape == (3, -(-hw[0] // stride), -(-hw[1] // stride))
    x = rng.standard_normal((2, 2, *hw))
    y = layer.forward(nhwc(x), training=False)
    expected = torch_conv_same(x, layer.params["W"], layer.params["b"], (stride, stride))
    np.testing.assert_allclose(nchw(y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_same_matches_keras(keras, rng, k, stride):
    ours = built(Conv2D(4, k, stride, "same"), (3, 7, 6))
    x = rng.standard_normal((2, 7, 6, 3))
    theirs = keras.layers.Conv2D(4, k, stride, "same", dtype="float64")
    theirs.build((None, 7, 6, 3))
    theirs.set_weights([to_keras_conv_kernel(ours.params["W"]), ours.params["b"]])
    np.testing.assert_allclose(ours.forward(x, False), keras_run(keras, theirs, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pools_with_same_padding_are_tensorflows(rng, k, stride, pool):
    """Max: -inf padding; average: the mean of the window's input elements (the padding excluded)."""
    cls = MaxPooling2D if pool == "max" else AveragePooling2D
    x = rng.standard_normal((2, 3, 7, 8))
    layer = built(cls(k, stride, "same"), (3, 7, 8))
    (top, bottom), (left, right) = tf_same(7, k, stride), tf_same(8, k, stride)
    if pool == "max":
        expected = tf.max_pool2d(tf.pad(t(x), (left, right, top, bottom), value=-np.inf), k, stride)
    else:
        ones = tf.pad(torch.ones(1, 1, 7, 8, dtype=torch.float64), (left, right, top, bottom))
        expected = tf.avg_pool2d(tf.pad(t(x), (left, right, top, bottom)), k, stride) / tf.avg_pool2d(
            ones, k, stride
        )
    y = layer.forward(nhwc(x), training=False)
    assert y.shape == (2, -(-7 // stride), -(-8 // stride), 3)
    np.testing.assert_allclose(nchw(y), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, stride", [(2, 1), (3, 2), (2, 2), (3, 1), (4, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_pools_match_keras(keras, rng, k, stride, padding):
    x = rng.standard_normal((2, 7, 6, 3))
    (top, bottom), (left, right) = tf_same(7, k, stride), tf_same(6, k, stride)
    checks = [(MaxPooling2D, keras.layers.MaxPooling2D)]
    # Keras' torch backend pads an uneven "same" average pool by replicating the edge, not as TensorFlow
    if padding == "valid" or (top == bottom and left == right):
        checks.append((AveragePooling2D, keras.layers.AveragePooling2D))
    for ours_cls, keras_cls in checks:
        ours = built(ours_cls(k, stride, padding), (3, 7, 6))
        theirs = keras_cls(k, stride, padding, dtype="float64")
        np.testing.assert_allclose(
            ours.forward(x, False), keras_run(keras, theirs, x), rtol=1e-12, atol=1e-12
        )


# -- the conv family against torch and Keras -------------------------------------------------------------
@pytest.mark.parametrize("data_format", FORMATS)
def test_grouped_conv2d_matches_torch(rng, data_format):
    layer = built(Conv2D(6, (3, 2), (2, 1), "same", data_format, groups=3), (3, 6, 5), data_format)
    assert layer.params["W"].shape == (6, 1, 3, 2)
    x = rng.standard_normal((2, 3, 6, 5))
    y = layer.forward(nhwc(x) if data_format == "channels_last" else x, False)
    y = nchw(y) if data_format == "channels_last" else y
    expected = torch_conv_same(x, layer.params["W"], layer.params["b"], (2, 1), groups=3)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_depthwise_conv2d_matches_torch_and_keras(keras, rng, multiplier, padding):
    ours = built(DepthwiseConv2D(3, 2, padding, multiplier), (4, 7, 6))
    W, b = ours.params["W"], ours.params["b"]
    assert W.shape == (4 * multiplier, 1, 3, 3) and ours.count_params() == 4 * multiplier * 10
    x = rng.standard_normal((2, 7, 6, 4))
    y = ours.forward(x, False)
    if padding == "same":
        expected = torch_conv_same(nchw(x), W, b, (2, 2), groups=4)
    else:
        expected = tf.conv2d(t(nchw(x)), t(W), t(b), 2, 0, 1, 4).numpy()
    np.testing.assert_allclose(nchw(y), expected, rtol=1e-10, atol=1e-12)
    theirs = keras.layers.DepthwiseConv2D(3, 2, padding, multiplier, dtype="float64")
    theirs.build((None, 7, 6, 4))
    theirs.set_weights([to_keras_depthwise_kernel(W, 4), b])
    np.testing.assert_allclose(y, keras_run(keras, theirs, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_separable_conv2d_is_depthwise_then_pointwise_as_keras(keras, rng, padding):
    ours = built(SeparableConv2D(5, 3, 1, padding, depth_multiplier=2), (3, 6, 7))
    dw, pw, b = ours.params["depthwise_W"], ours.params["pointwise_W"], ours.params["b"]
    assert dw.shape == (6, 1, 3, 3) and pw.shape == (5, 6, 1, 1) and b.shape == (5,)
    x = rng.standard_normal((2, 6, 7, 3))
    y = ours.forward(x, False)
    if padding == "same":
        mid = torch_conv_same(nchw(x), dw, None, (1, 1), groups=3)
    else:
        mid = tf.conv2d(t(nchw(x)), t(dw), None, 1, 0, 1, 3).numpy()
    expected = tf.conv2d(t(mid), t(pw), t(b)).numpy()
    np.testing.assert_allclose(nchw(y), expected, rtol=1e-10, atol=1e-12)
    theirs = keras.layers.SeparableConv2D(5, 3, 1, padding, depth_multiplier=2, dtype="float64")
    theirs.build((None, 6, 7, 3))
    theirs.set_weights([to_keras_depthwise_kernel(dw, 3), to_keras_conv_kernel(pw), b])
    assert theirs.count_params() == ours.count_params()
    np.testing.assert_allclose(y, keras_run(keras, theirs, x), rtol=1e-10, atol=1e-12)


def keras_transpose_length(size, k, s, padding, output_padding=None, d=1):
    """Keras' deconv_output_length, written out."""
    k = (k - 1) * d + 1
    if output_padding is None:
        return size * s if padding == "same" else size * s + max(k - s, 0)
    pad = k // 2 if padding == "same" else 0
    return (size - 1) * s + k - 2 * pad + output_padding


def tf_conv2d_transpose(x_nchw, W, b, stride, padding, out_hw, dilation=1):
    """TensorFlow's conv2d_transpose in torch: the gradient in its input of a conv2d from out_hw with the
    transposed kernel (W (C_in, F, kh, kw) read as a conv2d weight from F to C_in channels)."""
    pads = [
        tf_same(o, k, s, dilation) if padding == "same" else (0, 0)
        for o, k, s in zip(out_hw, W.shape[2:], stride)
    ]
    y = torch.zeros((x_nchw.shape[0], W.shape[1], *out_hw), dtype=torch.float64, requires_grad=True)
    out = tf.conv2d(tf.pad(y, (*pads[1], *pads[0])), t(W), None, stride, 0, dilation)
    assert tuple(out.shape) == x_nchw.shape
    out.backward(t(x_nchw))
    return y.grad.numpy() + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("output_padding", [None, 0, 1])
@pytest.mark.parametrize("dilation", [1, 2])
def test_conv2d_transpose_sizes_and_values_are_keras_and_tensorflows(
    rng, k, stride, padding, output_padding, dilation
):
    if output_padding is not None and output_padding >= stride:
        pytest.skip("output_padding must be smaller than the stride")
    h, w = 4, 3
    oh = keras_transpose_length(h, k, stride, padding, output_padding, dilation)
    ow = keras_transpose_length(w, k, stride, padding, output_padding, dilation)
    if min(oh, ow) < 1 or (padding == "same" and (-(-oh // stride), -(-ow // stride)) != (h, w)):
        pytest.skip("TensorFlow refuses this output size")
    ours = built(Conv2DTranspose(3, k, stride, padding, output_padding, dilation_rate=dilation), (2, h, w))
    assert ours.out_shape == (3, oh, ow)
    assert ours.params["W"].shape == (2, 3, k, k)
    x = rng.standard_normal((2, 2, h, w))
    y = ours.forward(nhwc(x), False)
    W, b = ours.params["W"], ours.params["b"]
    expected = tf_conv2d_transpose(x, W, b, (stride, stride), padding, (oh, ow), dilation)
    np.testing.assert_allclose(nchw(y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "k, stride, padding", [(3, 1, "same"), (4, 2, "same"), (2, 2, "same"), (3, 2, "valid"), (2, 3, "valid")]
)
def test_conv2d_transpose_matches_keras(keras, rng, k, stride, padding):
    """Cases where Keras' torch backend agrees with TensorFlow (it warns where it cannot)."""
    ours = built(Conv2DTranspose(4, k, stride, padding), (3, 5, 4))
    x = rng.standard_normal((2, 5, 4, 3))
    theirs = keras.layers.Conv2DTranspose(4, k, stride, padding, dtype="float64")
    theirs.build((None, 5, 4, 3))
    theirs.set_weights([ours.params["W"].transpose(2, 3, 1, 0), ours.params["b"]])  # Keras: (kh, kw, F, C)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras' inconsistency warning: a case not comparable
        expected = keras_run(keras, theirs, x)
    np.testing.assert_allclose(ours.forward(x, False), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling2d_matches_keras(keras, rng, keepdims):
    x = rng.standard_normal((3, 5, 4, 6))
    ours = built(GlobalAveragePooling2D(keepdims=keepdims), (6, 5, 4))
    assert ours.out_shape == ((6, 1, 1) if keepdims else (6,))
    theirs = keras.layers.GlobalAveragePooling2D(keepdims=keepdims, dtype="float64")
    # Keras' global pool averages in float32 whatever the layer's dtype: its own rounding is the tolerance
    np.testing.assert_allclose(ours.forward(x, False), keras_run(keras, theirs, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.forward(x, False).reshape(3, 6), x.mean(axis=(1, 2)), rtol=1e-12)


# -- data formats ----------------------------------------------------------------------------------------
LAYER_CASES = {
    "conv2d": lambda f: Conv2D(4, (3, 2), (2, 1), "same", f, groups=2),
    "conv2d-dilated": lambda f: Conv2D(3, 3, 1, "same", f, dilation_rate=2),
    "depthwise": lambda f: DepthwiseConv2D(3, 1, "same", 2, f),
    "separable": lambda f: SeparableConv2D(3, 2, 2, "same", f, depth_multiplier=2),
    "transpose": lambda f: Conv2DTranspose(3, 3, 2, "same", data_format=f),
    "transpose-valid": lambda f: Conv2DTranspose(3, 2, 3, "valid", 1, f),
    "max": lambda f: MaxPooling2D(3, 2, "same", f),
    "avg": lambda f: AveragePooling2D(2, 1, "same", f),
    "gap": lambda f: GlobalAveragePooling2D(f, keepdims=True),
}


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_channels_last_and_channels_first_give_the_same_numbers_transposed(rng, name):
    last = built(LAYER_CASES[name]("channels_last"), (2, 6, 5))
    first = built(LAYER_CASES[name]("channels_first"), (2, 6, 5))
    assert last.layout == "NHWC" and first.layout == "NCHW"
    for k in last.params:
        np.testing.assert_array_equal(last.params[k], first.params[k])
    x = rng.standard_normal((2, 2, 6, 5))
    y_first = first.forward(x, True)
    y_last = last.forward(nhwc(x), True)
    np.testing.assert_allclose(nchw(y_last), y_first, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y_first.shape)
    dx_first = first.backward(dout)
    dx_last = last.backward(nhwc(dout))
    np.testing.assert_allclose(nchw(dx_last), dx_first, rtol=1e-12, atol=1e-12)
    for k in first.grads:
        np.testing.assert_allclose(last.grads[k], first.grads[k], rtol=1e-12, atol=1e-12)


def test_a_channels_last_model_computes_channels_last_with_no_transpose_at_the_entry(rng):
    model = Sequential(
        [Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(), Flatten(), Dense(3)],
        dtype=np.float64,
        seed=0,
    )
    model.build()
    assert model.data_format == "channels_last"
    assert [layer.layout for layer in model.layers[:2]] == ["NHWC", "NHWC"]
    assert model.layers[0].layer.layout == "NHWC" and model.layers[1].layer.layout == "NHWC"
    x = rng.standard_normal((4, 6, 6, 1))
    assert model._to_input(x) is x  # already in the model's layout and dtype: handed on as it is
    # NCHW batches (as `fastconv train` hands them) of one channel are a reshape of the same memory
    np.testing.assert_array_equal(model.predict(nchw(x)), model.predict(x))


def test_a_channels_first_model_takes_channels_first_shapes(rng):
    model = Sequential(
        [
            Conv2D(2, 3, padding="same", data_format="channels_first", input_shape=(3, 5, 4)),
            AveragePooling2D(),  # follows the model
            Flatten(),
            Dense(2),
        ],
        dtype=np.float64,
        seed=0,
    )
    model.build()
    assert model.data_format == "channels_first" and model.layers[1].layout == "NCHW"
    assert model.layers[1].keras_output_shape() == (None, 2, 2, 2)
    x = rng.standard_normal((3, 3, 5, 4))
    np.testing.assert_allclose(model.predict(x), model.predict(nhwc(x)), rtol=1e-12)


def test_image_layers_of_one_model_must_agree_on_the_data_format():
    model = Sequential(
        [
            Conv2D(2, 3, data_format="channels_first", input_shape=(1, 6, 6)),
            MaxPooling2D(data_format="channels_last"),
        ]
    )
    with pytest.raises(ValueError, match="must share a data_format"):
        model.build()


def test_flatten_in_channels_last_is_keras_order_so_dense_weights_carry_over(keras, rng):
    """The same weights in fastconv and Keras give the same outputs: Flatten flattens (H, W, C)."""
    ours = Sequential(
        [
            Conv2D(3, 3, activation="relu", padding="same", input_shape=(5, 4, 2)),
            DepthwiseConv2D(2, 2, "same", 2, activation="relu"),
            Flatten(),
            Dense(4, activation="softmax"),
        ],
        dtype=np.float64,
        seed=0,
    )
    ours.build()
    theirs = keras.Sequential(
        [
            keras.Input((5, 4, 2), dtype="float64"),
            keras.layers.Conv2D(3, 3, activation="relu", padding="same", dtype="float64"),
            keras.layers.DepthwiseConv2D(2, 2, "same", 2, activation="relu", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(4, activation="softmax", dtype="float64"),
        ]
    )
    p = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in ours.params.items()}  # non-zero biases
    ours.set_params(p)
    theirs.set_weights(
        [
            to_keras_conv_kernel(p["conv2d.W"]),
            p["conv2d.b"],
            to_keras_depthwise_kernel(p["depthwise_conv2d.W"], 3),
            p["depthwise_conv2d.b"],
            p["dense.W"],
            p["dense.b"],
        ]
    )
    assert theirs.count_params() == ours.count_params()
    x = rng.standard_normal((3, 5, 4, 2))
    # Keras rounds part of this model through float32 (about 1e-7); a wrong flatten order is off by O(1)
    np.testing.assert_allclose(ours.predict(x), keras_run(keras, theirs, x), rtol=1e-6)


def test_flatten_with_channels_first_flattens_in_keras_channels_last_order(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = built(Flatten("channels_first"), (3, 4, 5), "channels_first")
    np.testing.assert_array_equal(layer.forward(x, False), nhwc(x).reshape(2, -1))
    dout = rng.standard_normal((2, 60))
    np.testing.assert_array_equal(layer.backward(dout), nchw(dout.reshape(2, 4, 5, 3)))


# -- models ------------------------------------------------------------------------------------------------
def small_model(data_format, dtype=np.float64, seed=0):
    shape = (8, 8, 2) if data_format == "channels_last" else (2, 8, 8)
    return Sequential(
        [
            Conv2D(4, 3, 2, "same", data_format, activation="relu", input_shape=shape),
            DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu"),
            SeparableConv2D(6, 2, padding="same", activation="relu"),
            Conv2DTranspose(4, 2, 2, "same", activation="relu"),
            AveragePooling2D(3, 2, "same"),
            GlobalAveragePooling2D(),
            Dense(3, activation="softmax"),
        ],
        dtype=dtype,
        seed=seed,
    )


@pytest.mark.parametrize("data_format", FORMATS)
def test_sequential_of_the_new_layers_has_exact_gradients(rng, data_format, backend):
    model = small_model(data_format)
    model.backend = backend
    model.compile("adam", loss="categorical_crossentropy")
    model.build()
    # non-zero biases: with zero ones, a ReLU after a zero window sits on its kink
    model.set_params({k: v + 0.1 * rng.standard_normal(v.shape) for k, v in model.params.items()})
    x = rng.standard_normal((3, 8, 8, 2))
    x = x if data_format == "channels_last" else nchw(x)
    result = gradcheck(model, fastconv.to_device(x, backend=backend), np.eye(3)[[0, 2, 1]], max_elements=30)
    assert len(result.errors) == 11 and max(result.errors.values()) < 1e-4


def test_sequential_of_the_new_layers_fits_and_prints_keras_shapes(rng, capsys):
    centers = rng.normal(size=(3, 8, 8, 2))
    labels = rng.integers(0, 3, 60)
    x = (centers[labels] + 0.3 * rng.normal(size=(60, 8, 8, 2))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels]
    model = small_model("channels_last", np.float32, seed=1)
    model.compile(
        optimizer=make_optimizer("adam", lr=0.03), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    history = model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] >= 0.8
    model.summary()
    shapes = [line for line in capsys.readouterr().out.splitlines() if "(None," in line]
    assert [s.split("(None,")[1].split(")")[0].strip() for s in shapes] == [
        "4, 4, 4",
        "4, 4, 8",
        "4, 4, 6",
        "8, 8, 4",
        "4, 4, 4",
        "4",
        "3",
    ]


def test_sequential_param_counts_match_keras(keras):
    ours = small_model("channels_last")
    ours.build()
    theirs = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, 2, "same", activation="relu"),
            keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu"),
            keras.layers.SeparableConv2D(6, 2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(4, 2, 2, "same", activation="relu"),
            keras.layers.AveragePooling2D(3, 2, "same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    assert [layer.count_params() for layer in ours.layers] == [
        layer.count_params() for layer in theirs.layers
    ]
    assert [tuple(layer.output.shape) for layer in theirs.layers] == [
        layer.keras_output_shape() for layer in ours.layers
    ]


def test_the_training_step_takes_channels_first_batches_of_one_channel_as_fastconv_train_hands_them(rng):
    model = Sequential(
        [
            SeparableConv2D(3, 3, input_shape=(6, 6, 1)),
            GlobalAveragePooling2D(),
            Dense(2, activation="softmax"),
        ],
        dtype=np.float64,
        seed=0,
    )
    model.compile("sgd", loss="sparse_categorical_crossentropy")
    x = rng.standard_normal((4, 6, 6, 1))
    t_ = np.array([0, 1, 1, 0])
    loss_last, grads_last, _ = model.loss_and_gradient(x, t_)
    loss_first, grads_first, _ = model.loss_and_gradient(nchw(x), t_)
    assert loss_last == loss_first
    for k in grads_last:
        np.testing.assert_array_equal(grads_last[k], grads_first[k])
