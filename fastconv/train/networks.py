"""Networks on fastconv layers: the book's ``SimpleConvNet`` (conv - relu - pool - affine - relu - affine -
softmax) and ``SeparableConvNet``, a small modern one (a strided conv, a depthwise-separable block, a
transposed conv, global average pooling)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from fastconv._arrays import to_host
from fastconv._shapes import conv_output_size, pair
from fastconv.train._io import check_arrays, load_npz, save_npz_atomic

__all__ = ["SEPARABLE_CHANNELS", "SeparableConvNet", "SimpleConvNet"]

_DEFAULT_CONV = MappingProxyType({"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1})
# SeparableConvNet's widths: the stem conv (and the depthwise conv), the pointwise conv, the
# transposed conv, the last conv (the features the classifier sees after global average pooling).
SEPARABLE_CHANNELS = (16, 32, 16, 32)


def _to_device(a: np.ndarray, backend: str | None) -> Any:
    if backend is None:
        return a
    import fastconv

    return fastconv.to_device(a, backend)


def _init_std(weight_init_std: float | str, fan_in: int) -> float:
    """A number is the std itself (the book); 'he'/'relu' is sqrt(2/fan_in), 'xavier'/'sigmoid' sqrt(1/fan_in)."""
    if isinstance(weight_init_std, str):
        key = weight_init_std.lower()
        if key in ("he", "relu"):
            return float(np.sqrt(2.0 / fan_in))
        if key in ("xavier", "sigmoid"):
            return float(np.sqrt(1.0 / fan_in))
        raise ValueError(
            f"weight_init_std must be a number, 'he'/'relu' or 'xavier'/'sigmoid', got {weight_init_std!r}"
        )
    return float(weight_init_std)


def _randn(rng: np.random.Generator | int | None) -> Any:
    """``randn(*shape)``: standard normal draws from ``rng`` (a Generator or a seed), or from the global
    ``numpy.random`` state when None (the book's)."""
    if rng is None:
        return np.random.randn
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def randn(*shape: int) -> np.ndarray:
        return gen.standard_normal(shape)

    return randn


class _LayeredNet:
    """What every network here shares: ``layers`` (an ordered dict of layers with ``forward`` /
    ``backward``) ending in ``last_layer`` (softmax with loss), ``params`` (held by the layers, updated
    in place), and ``_PARAM_LAYERS`` naming the layer that holds ``W<i>`` and ``b<i>`` for each i."""

    _PARAM_LAYERS: tuple[tuple[str, str], ...] = ()
    input_dim: tuple[int, int, int]
    params: dict[str, Any]
    layers: OrderedDict[str, Any]
    last_layer: Any
    backend: str | None

    def _input(self, x: Any) -> Any:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_dim:
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.input_dim))}), got {tuple(x.shape)}"
            )
        return x

    def predict(self, x: Any) -> Any:
        """Class scores (logits): x (N, C, H, W) -> (N, output_size)."""
        x = self._input(x)
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x: Any, t: Any) -> float:
        """Mean cross-entropy of softmax(predict(x)) against t (labels (N,) or one-hot (N, K))."""
        y = self.predict(x)
        return self.last_layer.forward(y, t)

    def accuracy(self, x: Any, t: Any, batch_size: int = 100) -> float:
        """Fraction of correct predictions, in batches of ``batch_size`` (every sample counts, also the
        last partial batch, which the book drops)."""
        t = to_host(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            y = to_host(self.predict(x[i : i + batch_size]))
            correct += int(np.sum(np.argmax(y, axis=1) == t[i : i + batch_size]))
        return correct / x.shape[0]

    def loss_and_gradient(self, x: Any, t: Any) -> tuple[float, dict[str, Any], Any]:
        """One forward and backward pass: (loss, grads like ``params``, softmax probabilities (N, K))."""
        loss = self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        grads = {}
        for name, i in self._PARAM_LAYERS:
            grads["W" + i], grads["b" + i] = self.layers[name].dW, self.layers[name].db
        return float(loss), grads, self.last_layer.y

    def evaluate_batch(self, x: Any, t: Any) -> tuple[float, Any]:
        """(mean loss, softmax probabilities (N, K)) of one batch, without a backward pass."""
        loss = self.loss(x, t)
        return float(loss), self.last_layer.y

    def gradient(self, x: Any, t: Any) -> dict[str, Any]:
        """Gradients of :meth:`loss` by backpropagation, keyed like ``params``."""
        return self.loss_and_gradient(x, t)[1]

    def numerical_gradient(self, x: Any, t: Any) -> dict[str, np.ndarray]:
        """Gradients of :meth:`loss` by central differences (slow; for checks on small nets)."""
        from fastconv.testing import numerical_gradient

        return {k: numerical_gradient(lambda: self.loss(x, t), p, 1e-4) for k, p in self.params.items()}

    # -- parameter files -----------------------------------------------------------------------------
    def save_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Write the parameters to an ``.npz`` file, atomically (temp file + rename)."""
        save_npz_atomic(file_name, self.params)

    def load_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Read parameters written by :meth:`save_params` (``allow_pickle=False``); names and shapes must match
        this network. Values are copied into the existing arrays, so layers and optimizers keep seeing them."""
        loaded = load_npz(file_name)
        check_arrays(file_name, loaded, {k: tuple(v.shape) for k, v in self.params.items()})
        self.set_params(loaded)

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Copy host arrays into the parameters in place (casting to the network's dtype)."""
        for k, v in values.items():
            p = self.params[k]
            p[...] = _to_device(np.asarray(v, dtype=p.dtype), self.backend) if self.backend else np.asarray(v)

    def first_layer_filters(self) -> np.ndarray:
        """``W1`` on the host, (F, C, k, k)."""
        return to_host(self.params["W1"])


class SimpleConvNet(_LayeredNet):
    """conv - relu - pool(2x2, stride 2) - affine - relu - affine - softmax, as in the book.

    Parameters: ``W1`` (F, C, k, k), ``b1`` (F,), ``W2`` (F*PH*PW, hidden), ``b2`` (hidden,),
    ``W3`` (hidden, output), ``b3`` (output,), where the conv output is
    ``OH = (H + 2*pad - k) // stride + 1`` and the pool output ``PH = OH // 2`` (floor mode).

    Beyond the book: ``weight_init_std`` may be ``'he'`` (sqrt(2/fan_in) per layer); ``backend``
    names the fastconv backend of the conv and pool layers, and its device holds the parameters;
    ``dtype`` (default float64, as the book) and ``rng`` (a ``numpy.random.Generator`` or a seed;
    default the global ``numpy.random`` state, as the book) for the initial weights.
    """

    def __init__(
        self,
        input_dim: tuple[int, int, int] = (1, 28, 28),
        conv_param: Mapping[str, int] = _DEFAULT_CONV,
        hidden_size: int = 100,
        output_size: int = 10,
        weight_init_std: float | str = 0.01,
        *,
        backend: str | None = None,
        dtype: Any = np.float64,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        from fastconv.layers import Affine, Convolution, Pooling, Relu, SoftmaxWithLoss

        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {input_dim!r}")
        unknown = set(conv_param) - set(_DEFAULT_CONV)
        if unknown:
            raise ValueError(
                f"conv_param has unknown keys {sorted(unknown)}; it takes {sorted(_DEFAULT_CONV)}"
            )
        cp = {**_DEFAULT_CONV, **conv_param}
        filter_num, filter_size = int(cp["filter_num"]), int(cp["filter_size"])
        pad, stride = (
            pair(cp["pad"], "conv_param['pad']", minimum=0),
            pair(cp["stride"], "conv_param['stride']", minimum=1),
        )
        c, h, w = (int(v) for v in input_dim)
        ks = pair(filter_size, "conv_param['filter_size']", minimum=1)
        conv_hw = conv_output_size((h, w), ks, stride, pad, (1, 1))
        pool_hw = conv_output_size(conv_hw, (2, 2), (2, 2), (0, 0), (1, 1))
        pool_output_size = filter_num * pool_hw[0] * pool_hw[1]
        self.input_dim = (c, h, w)
        self.conv_param = cp
        self.hidden_size, self.output_size = int(hidden_size), int(output_size)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        randn = _randn(rng)
        shapes = {
            "W1": (filter_num, c, *ks),
            "W2": (pool_output_size, self.hidden_size),
            "W3": (self.hidden_size, self.output_size),
        }
        fan_in = {"W1": c * ks[0] * ks[1], "W2": pool_output_size, "W3": self.hidden_size}
        params = {}
        for i in (1, 2, 3):
            wk = f"W{i}"
            params[wk] = _init_std(weight_init_std, fan_in[wk]) * randn(*shapes[wk])
            params[f"b{i}"] = np.zeros(shapes[wk][0] if i == 1 else shapes[wk][1])
        self.params = {
            k: _to_device(np.ascontiguousarray(v, dtype=self.dtype), backend) for k, v in params.items()
        }

        self.layers = OrderedDict()
        # the input needs no gradient: the first layer's backward skips dx (and col2im)
        self.layers["Conv1"] = Convolution(
            self.params["W1"], self.params["b1"], stride, pad, need_dx=False, backend=backend
        )
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2, backend=backend)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    _PARAM_LAYERS = (("Conv1", "1"), ("Affine1", "2"), ("Affine2", "3"))


class SeparableConvNet(_LayeredNet):
    """A small modern CNN: a strided conv, a depthwise-separable block, a transposed conv, a conv, global
    average pooling and one affine layer::

        Conv1    3x3, stride 2, pad 1      C  -> c1      (H, W) -> (ceil(H/2), ceil(W/2))
        Relu1
        DWConv2  3x3 depthwise, pad 1      c1 -> c1      groups c1: one 3x3 filter per channel
        PWConv3  1x1 pointwise             c1 -> c2      mixes the channels (depthwise + pointwise:
        Relu3                                            the separable block)
        Deconv4  2x2 transposed, stride 2  c2 -> c3      back to (2*ceil(H/2), 2*ceil(W/2))
        Relu4
        Conv5    3x3, pad 1                c3 -> c4
        Relu5
        GAP6     global average pool                     (N, c4, 1, 1)
        Affine6                            c4 -> output_size
        softmax with cross-entropy

    with ``(c1, c2, c3, c4) = channels`` (:data:`SEPARABLE_CHANNELS` by default). Any (C, H, W) input
    works (8x8 digits, 28x28 MNIST). Parameters ``W1``..``W6`` and ``b1``..``b6`` of those layers:
    ``W1`` (c1, C, 3, 3), ``W2`` (c1, 1, 3, 3), ``W3`` (c2, c1, 1, 1), ``W4`` (c2, c3, 2, 2) (a
    transposed conv's weights are (C_in, C_out, kh, kw)), ``W5`` (c4, c3, 3, 3), ``W6`` (c4, output_size).

    Weights are drawn with std ``weight_init_std`` (default ``'he'``: sqrt(2/fan_in), where fan_in counts
    the inputs each output sums: C_in*kh*kw for a conv, C_in*kh*kw/(sh*sw) for a transposed conv),
    biases are zero. ``backend``, ``dtype`` and ``rng`` as for :class:`SimpleConvNet`. The interface is
    SimpleConvNet's (``predict``, ``loss``, ``loss_and_gradient``, ``params``, ``save_params``, ...), so the
    training loop, ``fastconv train --model separable``, checkpoints and ``fastconv.gradcheck`` take it.
    """

    _PARAM_LAYERS = (
        ("Conv1", "1"),
        ("DWConv2", "2"),
        ("PWConv3", "3"),
        ("Deconv4", "4"),
        ("Conv5", "5"),
        ("Affine6", "6"),
    )

    def __init__(
        self,
        input_dim: tuple[int, int, int] = (1, 28, 28),
        channels: tuple[int, int, int, int] = SEPARABLE_CHANNELS,
        output_size: int = 10,
        weight_init_std: float | str = "he",
        *,
        backend: str | None = None,
        dtype: Any = np.float64,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        from fastconv.layers import (
            Affine,
            Convolution,
            Deconvolution,
            GlobalAvgPooling,
            Relu,
            SoftmaxWithLoss,
        )

        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {input_dim!r}")
        if len(channels) != 4 or any(int(ch) < 1 for ch in channels):
            raise ValueError(f"channels must be four positive widths (c1, c2, c3, c4), got {channels!r}")
        c, h, w = (int(v) for v in input_dim)
        c1, c2, c3, c4 = (int(ch) for ch in channels)
        self.input_dim = (c, h, w)
        self.channels = (c1, c2, c3, c4)
        self.output_size = int(output_size)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        randn = _randn(rng)
        shapes = {
            "W1": (c1, c, 3, 3),
            "W2": (c1, 1, 3, 3),
            "W3": (c2, c1, 1, 1),
            "W4": (c2, c3, 2, 2),
            "W5": (c4, c3, 3, 3),
            "W6": (c4, self.output_size),
        }
        # a 2x2 transposed conv at stride 2 has no overlapping windows: each output sums c2 inputs
        fan_in = {"W1": c * 9, "W2": 9, "W3": c1, "W4": c2, "W5": c3 * 9, "W6": c4}
        bias_size = {"W1": c1, "W2": c1, "W3": c2, "W4": c3, "W5": c4, "W6": self.output_size}
        params = {}
        for wk, shape in shapes.items():
            params[wk] = _init_std(weight_init_std, fan_in[wk]) * randn(*shape)
            params["b" + wk[1:]] = np.zeros(bias_size[wk])
        self.params = {
            k: _to_device(np.ascontiguousarray(v, dtype=self.dtype), backend) for k, v in params.items()
        }

        p = self.params
        self.layers = OrderedDict()
        # the input needs no gradient: the first layer's backward skips dx
        self.layers["Conv1"] = Convolution(p["W1"], p["b1"], 2, 1, need_dx=False, backend=backend)
        self.layers["Relu1"] = Relu()
        self.layers["DWConv2"] = Convolution(p["W2"], p["b2"], 1, 1, groups=c1, backend=backend)
        self.layers["PWConv3"] = Convolution(p["W3"], p["b3"], 1, 0, backend=backend)
        self.layers["Relu3"] = Relu()
        self.layers["Deconv4"] = Deconvolution(p["W4"], p["b4"], 2, 0, backend=backend)
        self.layers["Relu4"] = Relu()
        self.layers["Conv5"] = Convolution(p["W5"], p["b5"], 1, 1, backend=backend)
        self.layers["Relu5"] = Relu()
        self.layers["GAP6"] = GlobalAvgPooling(backend=backend)
        self.layers["Affine6"] = Affine(p["W6"], p["b6"])
        self.last_layer = SoftmaxWithLoss()
