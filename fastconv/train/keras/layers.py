"""The Keras-style layers: Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, Dropout and Activation.

Images are laid out as the layers' ``data_format`` says, as in Keras: ``"channels_last"`` (Keras'
default) batches are ``(N, H, W, C)`` and are computed channels-last (``layout="NHWC"`` in the
functional API, no transposes), ``"channels_first"`` batches are ``(N, C, H, W)``. A layer's
``data_format=None`` follows its model (see :class:`~fastconv.train.keras.model.Sequential`).
Feature batches are ``(N, D)``. A layer's shapes (``in_shape``, ``out_shape``) leave out the batch
axis and name images ``(C, H, W)`` whatever the data format (the arrays follow the data format).

Kernels are held in fastconv's layout, ``(F, C // groups, kh, kw)`` (``(C_in, F, kh, kw)`` for
Conv2DTranspose, PyTorch's), by a book layer (:mod:`fastconv.layers`). ``padding="same"`` is
TensorFlow's for every kernel size, stride and dilation: ``OH = ceil(H / stride)``, padded
``max((OH - 1)*stride + dilation*(k - 1) + 1 - H, 0)`` rows in all, the odd one at the bottom (columns
likewise); pools with "same" padding average over the input elements only. Weights start
Glorot-uniform (``limit = sqrt(6 / (fan_in + fan_out))``, fans counted from Keras' kernel shape) with
zero biases, as in Keras. :class:`~fastconv.train.keras.model.Sequential` builds and runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastconv._arrays import array_module, to_host
from fastconv._shapes import conv_output_size, pair
from fastconv.layers import (
    Affine,
    AvgPooling,
    Convolution,
    Deconvolution,
    GlobalAvgPooling,
    Pooling,
    Relu,
    Sigmoid,
    require_forward,
)
from fastconv.losses import softmax, softmax_backward

__all__ = [
    "ACTIVATIONS",
    "DATA_FORMATS",
    "Activation",
    "AveragePooling2D",
    "Conv2D",
    "Conv2DTranspose",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "Layer",
    "MaxPooling2D",
    "SeparableConv2D",
]

ACTIVATIONS = ("relu", "softmax", "sigmoid", "linear")
DATA_FORMATS = ("channels_last", "channels_first")
PADDINGS = ("valid", "same")


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


def _check_data_format(value: Any) -> str | None:
    if value is not None and value not in DATA_FORMATS:
        raise ValueError(f"data_format must be 'channels_last', 'channels_first' or None, got {value!r}")
    return value


def _check_padding(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {value!r}")
    return value.lower()


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def same_pad(
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """TensorFlow's "same" padding as ((top, bottom), (left, right)): per axis OH = ceil(H / s), padded
    max((OH - 1)*s + d*(k - 1) + 1 - H, 0) in all, the odd one at the bottom/right."""
    sides = []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        sides.append((total // 2, total - total // 2))
    return sides[0], sides[1]


def _pad_for(padding: str, in_hw: tuple[int, int], kernel: Any, stride: Any, dilation: Any = (1, 1)) -> Any:
    """The functional API's pad for a Keras padding: 0, or the explicit ((top, bottom), (left, right))."""
    return same_pad(in_hw, kernel, stride, dilation) if padding == "same" else 0


def _flat_pad(pad: Any) -> tuple[int, int, int, int]:
    if pad == 0:
        return (0, 0, 0, 0)
    (t, b), (l, r) = pad
    return (t, b, l, r)


def _image_shape(in_shape: tuple[int, ...], layer: Layer, what: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(
            f"{layer.name}: {type(layer).__name__} needs image input ({what}), got features of shape {in_shape}"
        )
    return in_shape  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
class Layer:
    """Base of the Keras-style layers. Shapes leave out the batch axis: images (C, H, W), features (D,);
    the arrays of an image follow ``layout`` ("NHWC" for channels_last, "NCHW" for channels_first)."""

    keras_name = "layer"
    uses_data_format = False  # image layers whose data_format sets the model's layout

    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        self.name = name
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.data_format: str | None = None
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.activation_name = "linear"
        self._act: Any = _Identity()
        self._seen_input: tuple[int, ...] | None = None  # the shape of the last forward's input
        self._model_format = "channels_last"  # the model's data format, set by build

    @property
    def layout(self) -> str:
        """The layout of this layer's image arrays: its own data_format, else its model's."""
        return "NCHW" if (self.data_format or self._model_format) == "channels_first" else "NHWC"

    def build(
        self,
        in_shape: tuple[int, ...],
        rng: np.random.Generator,
        dtype: np.dtype,
        backend: str | None,
        data_format: str | None = None,
    ) -> tuple[int, ...]:
        """Create the weights for inputs of ``in_shape`` ((C, H, W) or (D,)); ``data_format`` is the
        model's (channels_last when not given). Returns the output shape."""
        self._model_format = _check_data_format(data_format) or "channels_last"
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
        """x (N, *in_shape) -> (N, *out_shape) (images in ``layout``), the activation applied unless
        ``skip_activation`` (then a fused loss applies it, and ``backward`` gets ``skip_activation`` too)."""
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
        """Output shape as Keras prints it: (None, H, W, C) (channels_last), (None, C, H, W) or (None, D)."""
        s = self.out_shape or ()
        if len(s) == 3 and self._model_format == "channels_last":
            return (None, s[1], s[2], s[0])
        return (None, *s)

    def filters(self) -> np.ndarray | None:
        return None

    def skip_input_gradient(self) -> None:
        """The layer is the first of its model: its input needs no gradient (a convolution skips dx)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Weighted(Layer):
    """A layer with weights ``W`` (and bias ``b`` when ``use_bias``) held by a book layer in ``self.layer``
    (Convolution, Deconvolution or Affine), followed by ``activation``."""

    def __init__(
        self, activation: str | None, use_bias: bool, name: str | None, input_shape: Sequence[int] | None
    ) -> None:
        super().__init__(name, input_shape)
        self.use_bias = bool(use_bias)
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

    def skip_input_gradient(self) -> None:
        if hasattr(self.layer, "need_dx"):
            self.layer.need_dx = False

    def _weights(
        self, kernel: np.ndarray, n_bias: int, dtype: np.dtype, backend: str | None
    ) -> tuple[Any, Any]:
        """(W, b) placed on the backend's device and registered in ``params`` (b None without a bias)."""
        self.params["W"] = _place(kernel.astype(dtype), backend)
        if self.use_bias:
            self.params["b"] = _place(np.zeros(n_bias, dtype=dtype), backend)
        return self.params["W"], self.params.get("b")


class _ConvBase(_Weighted):
    """What the convolution layers share: kernel size, strides, padding, data format, dilation."""

    uses_data_format = True

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int],
        padding: str,
        data_format: str | None,
        dilation_rate: int | tuple[int, int],
        activation: str | None,
        use_bias: bool,
        name: str | None,
        input_shape: Sequence[int] | None,
    ) -> None:
        super().__init__(activation, use_bias, name, input_shape)
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.strides = pair(strides, "strides", minimum=1)
        self.padding = _check_padding(padding)
        self.data_format = _check_data_format(data_format)
        self.dilation_rate = pair(dilation_rate, "dilation_rate", minimum=1)

    def _conv_geometry(self, in_shape: tuple[int, ...], what: str) -> tuple[int, Any, tuple[int, int]]:
        """(C, the functional pad, (OH, OW)) of this layer's window sweep over ``in_shape``."""
        c, h, w = _image_shape(in_shape, self, what)
        pad = _pad_for(self.padding, (h, w), self.kernel_size, self.strides, self.dilation_rate)
        try:
            out_hw = conv_output_size(
                (h, w), self.kernel_size, self.strides, _flat_pad(pad), self.dilation_rate
            )
        except ValueError as e:
            raise ValueError(
                f"{self.name}: {type(self).__name__} on input (C, H, W) = {in_shape}: {e}"
            ) from None
        return c, pad, out_hw

    def filters(self) -> np.ndarray:
        return to_host(self.params["W"])


class Conv2D(_ConvBase):
    """2-D convolution: (C, H, W) -> (filters, OH, OW).

    Kernel (filters, C // groups, kh, kw), bias (filters,); ``padding`` 'valid' or 'same' (TensorFlow's,
    any kernel size and stride); ``groups`` splits the channels into independent convolutions.
    """

    keras_name = "conv2d"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = 1,
        groups: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        *,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias, name, input_shape
        )
        self.filters_n = _positive(filters, "filters")
        self.groups = _positive(groups, "groups")
        if self.filters_n % self.groups:
            raise ValueError(f"filters ({filters}) must be a multiple of groups ({groups})")

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, pad, (oh, ow) = self._conv_geometry(in_shape, "(H, W, C)")
        if c % self.groups:
            raise ValueError(
                f"{self.name}: the input channels ({c}) must be a multiple of groups ({self.groups})"
            )
        kh, kw = self.kernel_size
        cg = c // self.groups
        # Keras' kernel is (kh, kw, C // groups, filters): those are its fans
        kernel = _glorot_uniform(rng, (self.filters_n, cg, kh, kw), cg * kh * kw, self.filters_n * kh * kw)
        W, b = self._weights(kernel, self.filters_n, dtype, backend)
        self.layer = Convolution(
            W, b, self.strides, pad, self.dilation_rate, self.groups, self.layout, backend=backend
        )
        return (self.filters_n, oh, ow)


class DepthwiseConv2D(_ConvBase):
    """Depthwise convolution: each input channel convolved with its own ``depth_multiplier`` kernels,
    (C, H, W) -> (C * depth_multiplier, OH, OW); output channel c*depth_multiplier + k is channel c's
    k-th kernel, as in Keras.

    Kernel (C * depth_multiplier, 1, kh, kw) (a convolution with groups = C), bias (C * depth_multiplier,).
    """

    keras_name = "depthwise_conv2d"

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        *,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias, name, input_shape
        )
        self.depth_multiplier = _positive(depth_multiplier, "depth_multiplier")

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, pad, (oh, ow) = self._conv_geometry(in_shape, "(H, W, C)")
        kh, kw = self.kernel_size
        m = self.depth_multiplier
        # Keras' depthwise kernel is (kh, kw, C, depth_multiplier)
        kernel = _glorot_uniform(rng, (c * m, 1, kh, kw), c * kh * kw, m * kh * kw)
        W, b = self._weights(kernel, c * m, dtype, backend)
        self.layer = Convolution(W, b, self.strides, pad, self.dilation_rate, c, self.layout, backend=backend)
        return (c * m, oh, ow)


class SeparableConv2D(_ConvBase):
    """Depthwise-separable convolution: a depthwise convolution (``depth_multiplier`` kernels per channel,
    no bias) then a pointwise 1x1 convolution to ``filters`` channels with the bias and the activation.

    Parameters ``depthwise_W`` (C * depth_multiplier, 1, kh, kw), ``pointwise_W`` (filters,
    C * depth_multiplier, 1, 1) and ``b`` (filters,).
    """

    keras_name = "separable_conv2d"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = 1,
        depth_multiplier: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        *,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias, name, input_shape
        )
        self.filters_n = _positive(filters, "filters")
        self.depth_multiplier = _positive(depth_multiplier, "depth_multiplier")
        self.pointwise: Any = None

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, pad, (oh, ow) = self._conv_geometry(in_shape, "(H, W, C)")
        kh, kw = self.kernel_size
        m, f = self.depth_multiplier, self.filters_n
        # Keras' kernels: depthwise (kh, kw, C, m), pointwise (1, 1, C*m, filters)
        depthwise = _glorot_uniform(rng, (c * m, 1, kh, kw), c * kh * kw, m * kh * kw)
        pointwise = _glorot_uniform(rng, (f, c * m, 1, 1), c * m, f)
        self.params["depthwise_W"] = _place(depthwise.astype(dtype), backend)
        self.params["pointwise_W"] = _place(pointwise.astype(dtype), backend)
        if self.use_bias:
            self.params["b"] = _place(np.zeros(f, dtype=dtype), backend)
        self.layer = Convolution(
            self.params["depthwise_W"],
            None,
            self.strides,
            pad,
            self.dilation_rate,
            c,
            self.layout,
            backend=backend,
        )
        self.pointwise = Convolution(
            self.params["pointwise_W"], self.params.get("b"), 1, 0, 1, 1, self.layout, backend=backend
        )
        return (f, oh, ow)

    def _forward(self, x: Any, training: bool) -> Any:
        return self.pointwise.forward(self.layer.forward(x))

    def _backward(self, dout: Any) -> Any:
        dx = self.layer.backward(self.pointwise.backward(dout))
        self.grads["depthwise_W"] = self.layer.dW
        self.grads["pointwise_W"] = self.pointwise.dW
        if self.use_bias:
            self.grads["b"] = self.pointwise.db
        return dx

    def filters(self) -> np.ndarray:
        return to_host(self.params["depthwise_W"])


def transpose_geometry(
    size: int, k: int, s: int, d: int, padding: str, output_padding: int | None
) -> tuple[int, int, int, int]:
    """One axis of a Keras Conv2DTranspose: (output size, top pad, bottom pad, output_padding) for
    :func:`fastconv.conv_transpose2d`.

    The output size is Keras' (``deconv_output_length``): ``size*s`` for "same", ``size*s + max(k' - s, 0)``
    for "valid" (k' = d*(k - 1) + 1), or ``(size - 1)*s + k' - 2*pad + output_padding`` with pad k' // 2
    ("same") or 0 when ``output_padding`` is given. The values are TensorFlow's: the adjoint of a
    convolution from that output to ``size`` with the padding ``padding`` ("same": TensorFlow's split).
    """
    ek = d * (k - 1) + 1
    if output_padding is None:
        out = size * s if padding == "same" else size * s + max(ek - s, 0)
    else:
        out = (size - 1) * s + ek - 2 * (ek // 2 if padding == "same" else 0) + output_padding
    top = max((size - 1) * s + ek - out, 0) // 2 if padding == "same" else 0
    # rows of the full transposed convolution past the output: cropped, or zero rows added when negative
    crop = (size - 1) * s + ek - top - out
    return out, top, max(crop, 0), max(-crop, 0)


class Conv2DTranspose(_ConvBase):
    """Transposed convolution: (C, H, W) -> (filters, OH, OW), OH = H*stride ('same'),
    (H - 1)*stride + max(dilation*(kh - 1) + 1, stride) ('valid'), or with ``output_padding`` given
    (H - 1)*stride + dilation*(kh - 1) + 1 - 2*pad + output_padding with pad = (dilation*(kh - 1) + 1) // 2
    ('same') or 0 ('valid'), as Keras. The values are TensorFlow's conv2d_transpose: the adjoint in its
    input of a Conv2D with this kernel, strides and padding.

    Kernel (C, filters, kh, kw) (PyTorch's ConvTranspose2d layout), bias (filters,).
    """

    keras_name = "conv2d_transpose"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        output_padding: int | tuple[int, int] | None = None,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        *,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias, name, input_shape
        )
        self.filters_n = _positive(filters, "filters")
        self.output_padding = (
            None if output_padding is None else pair(output_padding, "output_padding", minimum=0)
        )
        if self.output_padding is not None:
            for o, s in zip(self.output_padding, self.strides):
                if o >= s:
                    raise ValueError(
                        f"output_padding {self.output_padding} must be smaller than the strides {self.strides}"
                    )

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, h, w = _image_shape(in_shape, self, "(H, W, C)")
        ops = self.output_padding or (None, None)
        axes = [
            transpose_geometry(size, k, s, d, self.padding, o)
            for size, k, s, d, o in zip((h, w), self.kernel_size, self.strides, self.dilation_rate, ops)
        ]
        (oh, top, bottom, op_h), (ow, left, right, op_w) = axes
        if min(oh, ow) < 1:
            raise ValueError(
                f"{self.name}: Conv2DTranspose on input {in_shape} gives an empty output ({oh}, {ow})"
            )
        kh, kw = self.kernel_size
        f = self.filters_n
        # Keras' kernel is (kh, kw, filters, C): fan_in from filters, fan_out from C
        kernel = _glorot_uniform(rng, (c, f, kh, kw), f * kh * kw, c * kh * kw)
        W, b = self._weights(kernel, f, dtype, backend)
        self.layer = Deconvolution(
            W,
            b,
            self.strides,
            ((top, bottom), (left, right)),
            (op_h, op_w),
            self.dilation_rate,
            1,
            self.layout,
            backend=backend,
        )
        return (f, oh, ow)

    def filters(self) -> np.ndarray:
        return to_host(self.params["W"]).transpose(1, 0, 2, 3)  # (filters, C, kh, kw), as Conv2D's


class _Pool2D(Layer):
    """What the window pools share: pool size, strides (default: the pool size), padding, data format."""

    uses_data_format = True

    def __init__(
        self,
        pool_size: int | tuple[int, int],
        strides: int | tuple[int, int] | None,
        padding: str,
        data_format: str | None,
        name: str | None,
        input_shape: Sequence[int] | None,
    ) -> None:
        super().__init__(name, input_shape)
        self.pool_size = pair(pool_size, "pool_size", minimum=1)
        self.strides = self.pool_size if strides is None else pair(strides, "strides", minimum=1)
        self.padding = _check_padding(padding)
        self.data_format = _check_data_format(data_format)
        self.layer: Any = None

    def _geometry(self, in_shape: tuple[int, ...]) -> tuple[int, Any, tuple[int, int]]:
        c, h, w = _image_shape(in_shape, self, "(H, W, C)")
        pad = _pad_for(self.padding, (h, w), self.pool_size, self.strides)
        try:
            out_hw = conv_output_size((h, w), self.pool_size, self.strides, _flat_pad(pad), (1, 1))
        except ValueError as e:
            raise ValueError(
                f"{self.name}: {type(self).__name__} on input (C, H, W) = {in_shape}: {e}"
            ) from None
        return c, pad, out_hw

    def _forward(self, x: Any, training: bool) -> Any:
        return self.layer.forward(x)

    def _backward(self, dout: Any) -> Any:
        return self.layer.backward(dout)


class MaxPooling2D(_Pool2D):
    """Max pooling: (C, H, W) -> (C, OH, OW); strides default to pool_size; 'same' padding is -inf."""

    keras_name = "max_pooling2d"

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        data_format: str | None = None,
        *,
        name: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, name, input_shape)

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, pad, (oh, ow) = self._geometry(in_shape)
        self.layer = Pooling(
            self.pool_size[0], self.pool_size[1], self.strides, pad, layout=self.layout, backend=backend
        )
        return (c, oh, ow)


class AveragePooling2D(_Pool2D):
    """Average pooling: (C, H, W) -> (C, OH, OW); strides default to pool_size; with 'same' padding a
    window's mean is over its input elements only, as in Keras."""

    keras_name = "average_pooling2d"

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        data_format: str | None = None,
        *,
        name: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, name, input_shape)

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, pad, (oh, ow) = self._geometry(in_shape)
        self.layer = AvgPooling(
            self.pool_size[0],
            self.pool_size[1],
            self.strides,
            pad,
            count_include_pad=False,
            layout=self.layout,
            backend=backend,
        )
        return (c, oh, ow)


class GlobalAveragePooling2D(Layer):
    """The mean of each channel over the image: (C, H, W) -> (C,), or (C, 1, 1) with ``keepdims``."""

    keras_name = "global_average_pooling2d"
    uses_data_format = True

    def __init__(
        self,
        data_format: str | None = None,
        keepdims: bool = False,
        *,
        name: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(name, input_shape)
        self.data_format = _check_data_format(data_format)
        self.keepdims = bool(keepdims)
        self.layer: Any = None

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        c, _, _ = _image_shape(in_shape, self, "(H, W, C)")
        self.layer = GlobalAvgPooling(self.layout, backend=backend)
        return (c, 1, 1) if self.keepdims else (c,)

    def _forward(self, x: Any, training: bool) -> Any:
        y = self.layer.forward(x)
        return y if self.keepdims else y.reshape(y.shape[0], -1)

    def _backward(self, dout: Any) -> Any:
        if not self.keepdims:
            shape = (dout.shape[0], 1, 1, -1) if self.layout == "NHWC" else (dout.shape[0], -1, 1, 1)
            dout = dout.reshape(shape)
        return self.layer.backward(dout)


class Flatten(Layer):
    """(C, H, W) -> (C*H*W,): the image array flattened in its own order, as Keras does: (H, W, C) for
    channels_last images, (C, H, W) for channels_first ones. ``data_format="channels_first"`` says the
    input is channels-first and flattens it in (H, W, C) order (Keras' way of keeping the next Dense's
    weights when a model switches data format)."""

    keras_name = "flatten"

    def __init__(
        self,
        data_format: str | None = None,
        *,
        name: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(name, input_shape)
        self.data_format = _check_data_format(data_format)

    def _build(
        self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: np.dtype, backend: str | None
    ) -> tuple[int, ...]:
        return (int(np.prod(in_shape)),)

    def _channels_moved(self, ndim: int) -> bool:
        return self.data_format == "channels_first" and ndim > 2

    def _forward(self, x: Any, training: bool) -> Any:
        self._shape = x.shape
        if self._channels_moved(x.ndim):
            x = array_module(x).moveaxis(x, 1, -1)
        return x.reshape(x.shape[0], -1)

    def _backward(self, dout: Any) -> Any:
        if not self._channels_moved(len(self._shape)):
            return dout.reshape(self._shape)
        n, c, *rest = self._shape
        moved = dout.reshape(n, *rest, c)
        return array_module(dout).ascontiguousarray(array_module(dout).moveaxis(moved, -1, 1))


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
