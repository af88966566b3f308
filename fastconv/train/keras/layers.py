"""The Keras-style layers: Conv2D, MaxPooling2D, Flatten, Dense, Dropout and Activation.

Each layer works on channels-first batches: ``(N, C, H, W)`` images or ``(N, D)`` features; its shapes
(``in_shape``, ``out_shape``) leave out the batch axis. Conv2D and Dense hold their weights in a book layer
(:class:`fastconv.layers.Convolution` / :class:`fastconv.layers.Affine`), so the kernels are fastconv's.
Weights start Glorot-uniform (``limit = sqrt(6 / (fan_in + fan_out))``, fans including the kernel area)
with zero biases, as in Keras. :class:`~fastconv.train.keras.model.Sequential` builds and runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastconv._arrays import array_module, to_host
from fastconv._shapes import conv_output_size, pair
from fastconv.layers import Affine, Convolution, Pooling, Relu, Sigmoid, require_forward
from fastconv.losses import softmax, softmax_backward

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "MaxPooling2D",
]

ACTIVATIONS = ("relu", "softmax", "sigmoid", "linear")


# ---------------------------------------------------------------------------------------------------
# activations (forward/backward objects)
class _Softmax:
    """Row-wise softmax (N, K) -> (N, K); backward is the Jacobian-vector product y * (dout - sum(dout * y))."""

    def __init__(self) -> None:
        self.y = None

    def forward(self, x: Any, training: bool = False) -> Any:
        self.y = softmax(x)
        return self.y

    def backward(self, dout: Any) -> Any:
        return softmax_backward(dout, require_forward(self, self.y))


class _Identity:
    def forward(self, x: Any, training: bool = False) -> Any:
        return x

    def backward(self, dout: Any) -> Any:
        return dout


def _activation(name: str | None) -> Any:
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
        self._seen_input: tuple[int, ...] | None = None  # the shape of the last forward's input

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

    def forward(self, x: Any, training: bool, skip_activation: bool = False) -> Any:
        """x (N, *in_shape) -> (N, *out_shape), the activation applied unless ``skip_activation`` (then a
        fused loss applies it, and ``backward`` gets ``skip_activation`` too)."""
        self._seen_input = tuple(x.shape)
        out = self._forward(x, training)
        return out if skip_activation else self._act.forward(out)

    def backward(self, dout: Any, skip_activation: bool = False) -> Any:
        """dout (N, *out_shape) -> gradient for the input (N, *in_shape); parameter gradients go to
        ``grads``. ``skip_activation``: dout is already the gradient before the activation (a fused loss)."""
        require_forward(self, self._seen_input, "forward(x, training)")
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
        return to_host(self.params["W"])


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
        xp = array_module(x)
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
