"""A Keras-style ``Sequential`` API on fastconv layers.

    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, batch_size=64, validation_data=(x_test, y_test))

Data layout: ``input_shape`` follows Keras, ``(H, W, C)``, and the model accepts images as Keras users
have them, channels-last ``(N, H, W, C)`` (or ``(N, H, W)`` for one channel); they are converted once,
at the edge, to the NCHW layout the kernels use. Channels-first ``(N, C, H, W)`` input is accepted as
is (when a shape could be read both ways, channels-last wins, as in Keras). Inside, kernels are
``(F, C, kh, kw)`` and ``Flatten`` flattens NCHW features in (C, H, W) order, so the first ``Dense``
weights are laid out for that order (Keras would use (H, W, C); parameter counts are the same).
Output shapes in :meth:`Sequential.summary` are shown channels-last, like Keras.

Weights start Glorot-uniform (``limit = sqrt(6 / (fan_in + fan_out))``, fans including the kernel
area) with zero biases, as Keras does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastconv._shapes import conv_output_size, pair
from fastconv.train._io import check_arrays, host, load_npz, save_npz_atomic
from fastconv.train.optimizers import Optimizer, make_optimizer

__all__ = [
    "Activation",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "History",
    "MaxPooling2D",
    "Sequential",
]

ACTIVATIONS = ("relu", "softmax", "sigmoid", "linear")
# Keras' defaults for optimizers named by string.
KERAS_OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.001},
    "rmsprop": {"lr": 0.001, "decay_rate": 0.9},
    "adam": {"lr": 0.001},
}


def _xp(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


# ---------------------------------------------------------------------------------------------------
# activations (forward/backward objects)
class _Softmax:
    """Row-wise softmax; backward is the Jacobian-vector product y * (dout - sum(dout * y))."""

    def __init__(self) -> None:
        self.y = None

    def forward(self, x: Any, training: bool = False) -> Any:
        from fastconv.layers import softmax

        self.y = softmax(x)
        return self.y

    def backward(self, dout: Any) -> Any:
        y = self.y
        return y * (dout - (dout * y).sum(axis=-1, keepdims=True))


class _Identity:
    def forward(self, x: Any, training: bool = False) -> Any:
        return x

    def backward(self, dout: Any) -> Any:
        return dout


def _activation(name: str | None) -> Any:
    from fastconv.layers import Relu, Sigmoid

    name = "linear" if name is None else name
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} (or None), got {name!r}")
    return {"relu": Relu, "sigmoid": Sigmoid, "softmax": _Softmax, "linear": _Identity}[name.lower()]()


def _glorot_uniform(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int
) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


# ---------------------------------------------------------------------------------------------------
class Layer:
    """Base of the Keras-style layers. Internal shapes are channels-first: (C, H, W) or (D,)."""

    keras_name = "layer"

    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        self.name = name
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.activation_name = "linear"
        self._act: Any = _Identity()

    def build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        self.in_shape = in_shape
        self.out_shape = self._build(in_shape, rng, dtype, backend)
        return self.out_shape

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        return in_shape

    def count_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def forward(self, x: Any, training: bool) -> Any:
        return self._act.forward(self._forward(x, training))

    def backward(self, dout: Any, skip_activation: bool = False) -> Any:
        if not skip_activation:
            dout = self._act.backward(dout)
        return self._backward(dout)

    def _forward(self, x: Any, training: bool) -> Any:
        return x

    def _backward(self, dout: Any) -> Any:
        return dout

    def keras_output_shape(self) -> tuple[Any, ...]:
        """Output shape as Keras prints it: (None, H, W, C) or (None, D)."""
        s = self.out_shape or ()
        return (None, s[1], s[2], s[0]) if len(s) == 3 else (None, *s)

    def filters(self) -> np.ndarray | None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Weighted(Layer):
    """A layer with weights ``W`` (and bias ``b`` when ``use_bias``) held by a book layer in ``self.layer``
    (Convolution or Affine), followed by ``activation``."""

    def __init__(
        self, activation: str | None, use_bias: bool, name: str | None, input_shape: Sequence[int] | None
    ) -> None:
        super().__init__(name, input_shape)
        self.use_bias = use_bias
        self.activation_name = activation or "linear"
        self._act = _activation(activation)
        self.layer: Any = None

    def _forward(self, x: Any, training: bool) -> Any:
        return self.layer.forward(x)

    def _backward(self, dout: Any) -> Any:
        dx = self.layer.backward(dout)
        self.grads["W"] = self.layer.dW
        if self.use_bias:
            self.grads["b"] = self.layer.db
        return dx


class Conv2D(_Weighted):
    """2-D convolution: (C, H, W) -> (filters, OH, OW); ``padding`` 'valid' or 'same' (odd kernels).

    Kernel (filters, C, kh, kw), bias (filters,); OH = (H + 2*pad - kh) // stride + 1.
    """

    keras_name = "conv2d"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        activation: str | None = None,
        use_bias: bool = True,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(activation, use_bias, name, input_shape)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        self.filters_n = filters
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.strides = pair(strides, "strides", minimum=1)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if padding == "same" and (self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0):
            raise ValueError(f"padding='same' needs an odd kernel_size, got {self.kernel_size}")
        self.padding = padding

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        from fastconv.layers import Convolution

        if len(in_shape) != 3:
            raise ValueError(
                f"{self.name}: Conv2D needs image input (H, W, C), got features of shape {in_shape}"
            )
        c, h, w = in_shape
        kh, kw = self.kernel_size
        pad = ((kh - 1) // 2, (kw - 1) // 2) if self.padding == "same" else (0, 0)
        oh, ow = conv_output_size((h, w), self.kernel_size, self.strides, pad, (1, 1))
        kernel = _glorot_uniform(rng, (self.filters_n, c, kh, kw), c * kh * kw, self.filters_n * kh * kw)
        self.params["W"] = _place(kernel.astype(dtype), backend)
        bias = np.zeros(self.filters_n, dtype=dtype)
        if self.use_bias:
            self.params["b"] = _place(bias, backend)
        self.layer = Convolution(
            self.params["W"], self.params["b"] if self.use_bias else 0.0, self.strides, pad, backend=backend
        )
        return (self.filters_n, oh, ow)

    def filters(self) -> np.ndarray:
        return host(self.params["W"])


class MaxPooling2D(Layer):
    """Max pooling: (C, H, W) -> (C, OH, OW), OH = (H - ph) // stride + 1; strides default to pool_size."""

    keras_name = "max_pooling2d"

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        name: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(name, input_shape)
        self.pool_size = pair(pool_size, "pool_size", minimum=1)
        self.strides = self.pool_size if strides is None else pair(strides, "strides", minimum=1)
        if padding != "valid":
            raise ValueError(f"MaxPooling2D supports padding='valid' only, got {padding!r}")
        self.layer: Any = None

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        from fastconv.layers import Pooling

        if len(in_shape) != 3:
            raise ValueError(f"{self.name}: MaxPooling2D needs image input, got features of shape {in_shape}")
        c, h, w = in_shape
        oh, ow = conv_output_size((h, w), self.pool_size, self.strides, (0, 0), (1, 1))
        self.layer = Pooling(self.pool_size[0], self.pool_size[1], self.strides, 0, backend=backend)
        return (c, oh, ow)

    def _forward(self, x: Any, training: bool) -> Any:
        return self.layer.forward(x)

    def _backward(self, dout: Any) -> Any:
        return self.layer.backward(dout)


class Flatten(Layer):
    """(C, H, W) -> (C*H*W,), in NCHW (C, H, W) order."""

    keras_name = "flatten"

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        return (int(np.prod(in_shape)),)

    def _forward(self, x: Any, training: bool) -> Any:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, dout: Any) -> Any:
        return dout.reshape(self._shape)


class Dense(_Weighted):
    """Fully connected: (D,) -> (units,), x @ W + b with W (D, units)."""

    keras_name = "dense"

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(activation, use_bias, name, input_shape)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units = units

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        from fastconv.layers import Affine

        if len(in_shape) != 1:
            raise ValueError(
                f"{self.name}: Dense needs flat input (add Flatten() first), got shape {in_shape}"
            )
        d = in_shape[0]
        self.params["W"] = _place(_glorot_uniform(rng, (d, self.units), d, self.units).astype(dtype), backend)
        if self.use_bias:
            self.params["b"] = _place(np.zeros(self.units, dtype=dtype), backend)
        self.layer = Affine(self.params["W"], self.params["b"] if self.use_bias else 0.0)
        return (self.units,)


class Dropout(Layer):
    """Inverted dropout, as Keras: training x * mask / (1 - rate); inference the identity."""

    keras_name = "dropout"

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.rng: np.random.Generator | None = None
        self.mask = None

    def _forward(self, x: Any, training: bool) -> Any:
        if not training or self.rate == 0.0:
            self.mask = None
            return x
        draw = self.rng.random(tuple(x.shape)) >= self.rate  # host RNG: reproducible on every backend
        xp = _xp(x)
        self.mask = xp.asarray(draw.astype(x.dtype) / np.asarray(1.0 - self.rate, dtype=x.dtype))
        return x * self.mask

    def _backward(self, dout: Any) -> Any:
        return dout if self.mask is None else dout * self.mask


class Activation(Layer):
    """An activation on its own: relu, softmax, sigmoid or linear."""

    keras_name = "activation"

    def __init__(self, activation: str, name: str | None = None) -> None:
        super().__init__(name)
        self.activation_name = activation
        self._act = _activation(activation)


def _place(a: np.ndarray, backend: str | None) -> Any:
    if backend is None:
        return np.ascontiguousarray(a)
    import fastconv

    return fastconv.to_device(np.ascontiguousarray(a), backend)


# ---------------------------------------------------------------------------------------------------
class History:
    """What :meth:`Sequential.fit` returns: ``history`` maps 'loss', 'accuracy', 'val_loss',
    'val_accuracy' to per-epoch lists; ``epoch`` lists the epoch indices."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))


LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error", "mse")


class Sequential:
    """A linear stack of layers with Keras' ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``summary``.

    ``backend``: fastconv backend for the conv and pool layers (its device holds the parameters);
    ``dtype``: parameter and compute dtype (float32, as Keras); ``seed``: initial weights, shuffling
    and dropout masks (``numpy.random.Generator``).
    """

    def __init__(
        self,
        layers: Sequence[Layer] | None = None,
        name: str = "sequential",
        *,
        backend: str | None = None,
        dtype: Any = np.float32,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.layers: list[Layer] = []
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.built = False
        self.input_shape: tuple[int, ...] | None = None  # Keras convention: (H, W, C) or (D,)
        self.params: dict[str, Any] = {}
        self.optimizer: Optimizer | None = None
        self.loss_name: str | None = None
        self.metrics: list[str] = []
        self._counts: dict[str, int] = {}
        for layer in layers or ():
            self.add(layer)

    # -- building ----------------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Append a layer (the first one may carry ``input_shape=(H, W, C)`` or ``(D,)``)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add takes a layer (Conv2D, Dense, ...), got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("cannot add layers to a model that is already built")
        if layer.name is None:
            n = self._counts.get(layer.keras_name, 0)
            layer.name = layer.keras_name if n == 0 else f"{layer.keras_name}_{n}"
            self._counts[layer.keras_name] = n + 1
        if any(other.name == layer.name for other in self.layers):
            raise ValueError(f"a layer named {layer.name!r} is already in the model")
        if not self.layers and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        elif layer.input_shape is not None:
            raise ValueError("only the first layer may give input_shape")
        self.layers.append(layer)  # weights are created by build(), at summary/fit time

    def build(self, input_shape: Sequence[int] | None = None) -> None:
        """Create the weights for ``input_shape`` (Keras convention (H, W, C) or (D,))."""
        if input_shape is not None:
            self.input_shape = tuple(int(v) for v in input_shape)
        if self.input_shape is None:
            raise ValueError(
                "the model has no input shape: give input_shape=(H, W, C) to the first layer, or call "
                "build(input_shape) / fit first"
            )
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = self._internal_shape(self.input_shape)
        self.params = {}
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng(layer.seed) if layer.seed is not None else self.rng
            shape = layer.build(shape, self.rng, self.dtype, self.backend)
            for k, p in layer.params.items():
                self.params[f"{layer.name}.{k}"] = p
        self.built = True

    @staticmethod
    def _internal_shape(keras_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(keras_shape) == 3:
            h, w, c = keras_shape
            return (c, h, w)
        if len(keras_shape) == 1:
            return keras_shape
        raise ValueError(f"input_shape must be (H, W, C) for images or (D,) for features, got {keras_shape}")

    def count_params(self) -> int:
        self._ensure_built()
        return sum(layer.count_params() for layer in self.layers)

    def _ensure_built(self, x: Any = None) -> None:
        if self.built:
            return
        if self.input_shape is None and x is not None:
            shape = tuple(x.shape[1:])
            self.input_shape = shape if len(shape) != 2 else (*shape, 1)  # (N, H, W): one channel
        self.build()

    def summary(self, print_fn: Callable[[str], Any] | None = None, line_length: int = 72) -> None:
        """Print layer (type), output shape and parameter count per layer, and the totals, like Keras."""
        self._ensure_built()
        out = print_fn or print
        cols = [int(line_length * f) for f in (0.45, 0.8, 1.0)]

        def row(fields: Sequence[str]) -> str:
            line, start = "", 0
            for text, end in zip(fields, cols):
                line += (" " + text).ljust(end - start)[: end - start]
                start = end
            return line.rstrip()

        out(f'Model: "{self.name}"')
        out("_" * line_length)
        out(row(["Layer (type)", "Output Shape", "Param #"]))
        out("=" * line_length)
        for i, layer in enumerate(self.layers):
            out(
                row(
                    [
                        f"{layer.name} ({type(layer).__name__})",
                        str(layer.keras_output_shape()),
                        str(layer.count_params()),
                    ]
                )
            )
            if i < len(self.layers) - 1:
                out("")
        out("=" * line_length)
        total = self.count_params()
        out(f"Total params: {total:,}")
        out(f"Trainable params: {total:,}")
        out("Non-trainable params: 0")
        out("_" * line_length)

    # -- data at the edge ---------------------------------------------------------------------------
    def _to_nchw(self, x: Any, device: bool = True) -> Any:
        """Channels-last (N, H, W, C) or (N, H, W) -> contiguous (N, C, H, W) in the model's dtype (on the
        model's device unless ``device`` is false). The one layout conversion, at the edge of the model."""
        self._ensure_built(x)
        xp = _xp(x)
        want = self.input_shape
        shape = tuple(x.shape[1:])
        if len(want) == 3:
            h, w, c = want
            if shape == (h, w, c):
                x = x.transpose(0, 3, 1, 2)
            elif shape == (c, h, w):
                pass
            elif shape == (h, w) and c == 1:
                x = x.reshape(x.shape[0], 1, h, w)
            else:
                raise ValueError(
                    f"x must have shape (N, {h}, {w}, {c}) (channels-last, as Keras) or (N, {c}, {h}, {w}), "
                    f"got {tuple(x.shape)}"
                )
        elif shape != want:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        x = xp.ascontiguousarray(x, dtype=self.dtype)
        return self._device(x) if device else x

    def _device(self, x: Any) -> Any:
        if self.backend is None:
            return x
        import fastconv

        return fastconv.to_device(x, self.backend)

    def _targets(self, y: Any) -> Any:
        y = np.asarray(host(y))
        if self.loss_name == "sparse_categorical_crossentropy":
            return y.reshape(-1).astype(np.int64)
        if y.ndim == 1 and self.loss_name == "categorical_crossentropy":
            raise ValueError(
                "categorical_crossentropy needs one-hot targets (N, K); use to_categorical(y) or "
                "loss='sparse_categorical_crossentropy' for integer labels"
            )
        return y.astype(self.dtype, copy=False)

    # -- compile / forward / backward ---------------------------------------------------------------
    def compile(
        self,
        optimizer: str | Optimizer = "rmsprop",
        loss: str = "categorical_crossentropy",
        metrics: Sequence[str] | None = None,
    ) -> None:
        """Choose the optimizer (a name with Keras' defaults, or an Optimizer), the loss
        ('categorical_crossentropy', 'sparse_categorical_crossentropy', 'mse') and metrics (['accuracy'])."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        metrics = list(metrics or [])
        for m in metrics:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"metrics may contain 'accuracy' only, got {m!r}")
        if isinstance(optimizer, str):
            defaults = KERAS_OPTIMIZER_DEFAULTS.get(optimizer.lower())
            if defaults is None:
                raise ValueError(
                    f"optimizer must be one of {', '.join(KERAS_OPTIMIZER_DEFAULTS)}, got {optimizer!r}"
                )
            optimizer = make_optimizer(optimizer, **defaults)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a name or a fastconv Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.loss_name = loss
        self.metrics = ["accuracy" if m == "acc" else m for m in metrics]

    def _forward(self, x: Any, training: bool, stop_before_softmax: bool = False) -> Any:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            if stop_before_softmax and i == n - 1:
                x = layer._forward(x, training)  # logits: the loss applies the softmax
            else:
                x = layer.forward(x, training)
        return x

    def _fused_softmax(self) -> bool:
        return self.loss_name in (
            "categorical_crossentropy",
            "sparse_categorical_crossentropy",
        ) and isinstance(self.layers[-1]._act, _Softmax)

    def loss_and_gradient(self, x: Any, t: Any) -> tuple[float, dict[str, Any], Any]:
        """One training step's forward and backward on an NCHW batch already on the device:
        (mean loss, grads keyed like ``params``, output probabilities (N, K))."""
        if self.loss_name is None:
            raise RuntimeError("compile the model before training it")
        xp = _xp(x)
        t_dev = xp.asarray(t) if xp is not np else t
        n = x.shape[0]
        if self._fused_softmax():
            from fastconv.layers import SoftmaxWithLoss

            head = SoftmaxWithLoss()
            logits = self._forward(x, True, stop_before_softmax=True)
            loss = head.forward(logits, t_dev)
            dout = head.backward(1)
            y = head.y
            skip = True
        else:
            y = self._forward(x, True)
            if self.loss_name in ("mse", "mean_squared_error"):
                diff = y - t_dev
                loss = (diff * diff).mean()
                dout = 2 * diff / diff.size
            else:  # cross-entropy on probabilities that are not a softmax output
                if t_dev.ndim == 1:
                    from fastconv.train.data import to_categorical

                    t_dev = xp.asarray(to_categorical(host(t_dev), y.shape[1], dtype=y.dtype))
                yc = xp.clip(y, 1e-7, 1 - 1e-7)
                loss = -(t_dev * xp.log(yc)).sum() / n
                dout = -t_dev / yc / n
            skip = False
        for i in range(len(self.layers) - 1, -1, -1):
            dout = self.layers[i].backward(dout, skip_activation=skip and i == len(self.layers) - 1)
        grads = {}
        for layer in self.layers:
            for k, g in layer.grads.items():
                grads[f"{layer.name}.{k}"] = g
        return float(loss), grads, y

    def evaluate_batch(self, x: Any, t: Any) -> tuple[float, Any]:
        """(mean loss, outputs (N, K)) of an NCHW batch already on the device, without dropout."""
        y = self._forward(x, False)
        return float(self._loss_value(y, t)), y

    def gradient(self, x: Any, t: Any) -> dict[str, Any]:
        """Gradients of the loss, keyed like ``params`` (x NCHW or channels-last)."""
        return self.loss_and_gradient(self._to_nchw(x), self._targets(t))[1]

    def loss(self, x: Any, t: Any) -> float:
        """Mean loss of the batch (no dropout)."""
        y = self._forward(self._to_nchw(x), False)
        return float(self._loss_value(y, self._targets(t)))

    def _loss_value(self, y: Any, t: Any) -> Any:
        xp = _xp(y)
        t = xp.asarray(t) if xp is not np else t
        if self.loss_name in ("mse", "mean_squared_error"):
            return ((y - t) ** 2).mean()
        if t.ndim == 1:
            return -xp.log(y[xp.arange(y.shape[0]), t] + 1e-7).sum() / y.shape[0]
        return -(t * xp.log(xp.clip(y, 1e-7, 1.0))).sum() / y.shape[0]

    # -- fit / evaluate / predict -------------------------------------------------------------------
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Model outputs (probabilities for a softmax head) for x, as a NumPy array (N, K)."""
        x = self._to_nchw(x, device=False)
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(host(self._forward(self._device(x[i : i + batch_size]), False)))
        return np.concatenate(out) if out else np.zeros((0,))

    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0) -> list[float] | float:
        """[loss, accuracy] over (x, y) (just the loss without metrics)."""
        if self.loss_name is None:
            raise RuntimeError("compile the model before evaluate")
        t_all = self._targets(y)
        total_loss, correct, n = 0.0, 0, x.shape[0]
        x = self._to_nchw(x, device=False)
        for i in range(0, n, batch_size):
            out = self._forward(self._device(x[i : i + batch_size]), False)
            t = t_all[i : i + batch_size]
            total_loss += float(self._loss_value(out, t)) * out.shape[0]
            labels = t if t.ndim == 1 else t.argmax(axis=1)
            correct += int((host(out).argmax(axis=1) == labels).sum())
        loss = total_loss / n
        if verbose:
            print(f"loss: {loss:.4f}" + (f" - accuracy: {correct / n:.4f}" if self.metrics else ""))
        return [loss, correct / n] if self.metrics else loss

    def fit(
        self,
        x: Any,
        y: Any,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int = 1,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
    ) -> History:
        """Train with mini-batches; returns a History ('loss', 'accuracy', 'val_loss', 'val_accuracy')."""
        if self.optimizer is None:
            raise RuntimeError("compile the model before fit")
        if batch_size < 1 or epochs < 0:
            raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        x_all = self._to_nchw(np.asarray(x) if _xp(x) is np else x, device=False)
        t_all = self._targets(y)
        if len(t_all) != x_all.shape[0]:
            raise ValueError(f"x has {x_all.shape[0]} samples, y has {len(t_all)}")
        history = History()
        n = x_all.shape[0]
        steps = -(-n // batch_size)
        for epoch in range(epochs):
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            bar = _progress(steps, f"Epoch {epoch + 1}/{epochs}", verbose == 1)
            total, correct = 0.0, 0
            for s in range(steps):
                idx = order[s * batch_size : (s + 1) * batch_size]
                xb = self._device(x_all[idx])
                tb = t_all[idx]
                loss, grads, out = self.loss_and_gradient(xb, tb)
                self.optimizer.update(self.params, grads)
                labels = tb if tb.ndim == 1 else tb.argmax(axis=1)
                correct += int((host(out).argmax(axis=1) == labels).sum())
                total += loss * len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{total / ((s * batch_size) + len(idx)):.4f}",
                        accuracy=f"{correct / ((s * batch_size) + len(idx)):.4f}",
                    )
            logs = {"loss": total / n}
            if self.metrics:
                logs["accuracy"] = correct / n
            if validation_data is not None:
                res = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                if self.metrics:
                    logs["val_loss"], logs["val_accuracy"] = res
                else:
                    logs["val_loss"] = res
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                bar.close()
            elif verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
            history.append(epoch, logs)
        return history

    # -- weights ------------------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        self._ensure_built()
        return [host(p).copy() for p in self.params.values()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        self._ensure_built()
        if len(weights) != len(self.params):
            raise ValueError(f"set_weights needs {len(self.params)} arrays, got {len(weights)}")
        for (k, p), w in zip(self.params.items(), weights):
            if tuple(np.shape(w)) != tuple(p.shape):
                raise ValueError(f"weight {k!r} has shape {tuple(p.shape)}, got {tuple(np.shape(w))}")
            p[...] = _xp(p).asarray(np.asarray(w, dtype=p.dtype))

    def save_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Write the weights to an ``.npz`` file (keys ``<layer>.W`` / ``<layer>.b``), atomically."""
        self._ensure_built()
        save_npz_atomic(file_name, self.params)

    save_weights = save_params

    def load_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Read weights written by :meth:`save_params` (``allow_pickle=False``; names and shapes must match)."""
        self._ensure_built()
        loaded = load_npz(file_name)
        check_arrays(file_name, loaded, {k: tuple(v.shape) for k, v in self.params.items()})
        self.set_weights([loaded[k] for k in self.params])

    load_weights = load_params

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        self.set_weights([values[k] for k in self.params])

    def first_layer_filters(self) -> np.ndarray | None:
        """The first Conv2D kernel on the host, (F, C, kh, kw), or None."""
        for layer in self.layers:
            f = layer.filters()
            if f is not None:
                return f
        return None


def mnist_cnn(input_shape: Sequence[int] = (28, 28, 1), padding: str = "valid", **kwargs: Any) -> Sequential:
    """The Keras tutorial's MNIST network, conv32-pool-conv64-pool-conv64-dense64-dense10 (93,322
    parameters on 28x28x1 with 'valid' padding); ``kwargs`` go to :class:`Sequential` (backend, dtype, seed)."""
    return Sequential(
        [
            Conv2D(32, (3, 3), activation="relu", padding=padding, input_shape=input_shape),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu", padding=padding),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu", padding=padding),
            Flatten(),
            Dense(64, activation="relu"),
            Dense(10, activation="softmax"),
        ],
        **kwargs,
    )


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the examples extra
        return None
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=True, dynamic_ncols=True)
