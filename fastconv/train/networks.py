"""The book's ``SimpleConvNet`` (conv - relu - pool - affine - relu - affine - softmax), on fastconv layers."""

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

__all__ = ["SimpleConvNet"]

_DEFAULT_CONV = MappingProxyType({"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1})


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


class SimpleConvNet:
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
        if rng is None:
            randn = np.random.randn
        else:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

            def randn(*shape: int) -> np.ndarray:
                return gen.standard_normal(shape)

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

        self.layers: OrderedDict[str, Any] = OrderedDict()
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
