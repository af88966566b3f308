"""Drop-in layers with the public API of the book's ``common/layers.py``.

``Convolution``, ``Deconvolution``, ``Pooling``, ``AvgPooling`` and ``GlobalAvgPooling`` dispatch to
the selected backend (see :mod:`fastconv._registry`) and take ``layout="NHWC"`` for channels-last
images; the other layers are array-module agnostic (NumPy or CuPy arrays). Every layer reads its
parameters (``self.W``, ``self.b``, ...) at call time and keeps no cached or cast copy, so an
optimizer that updates them in place, a numerical gradient that perturbs them element by element,
or a ``load_params`` that rebinds them is seen by the next call.

Softmax and the cross-entropy live in :mod:`fastconv.losses`; ``softmax`` and ``cross_entropy_error``
are importable from here too, as from the book's ``common/functions.py``. Calling a layer's
``backward`` before its ``forward`` raises a ValueError naming the layer.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastconv import functional as F
from fastconv._arrays import array_module
from fastconv._shapes import IntOrPair, PadSpec
from fastconv.losses import cross_entropy_error, softmax, softmax_cross_entropy_backward

__all__ = [
    "Affine",
    "AvgPooling",
    "BatchNorm2d",
    "BatchNormalization",
    "Convolution",
    "Deconvolution",
    "Dropout",
    "GlobalAvgPooling",
    "Pooling",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "cross_entropy_error",
    "softmax",
]


def require_forward(layer: Any, saved: Any, call: str = "forward(x)") -> Any:
    """What ``layer.forward`` saved for ``backward`` (``saved``), or a ValueError naming the layer when
    ``backward`` comes before any ``forward`` (nothing saved: ``saved`` is None).

    ``call`` is the forward call to name in the message, e.g. ``"forward(x, t)"``. Every layer's
    ``backward`` (the book's here, the Keras-style ones in :mod:`fastconv.train.keras`) checks with it.
    """
    if saved is None:
        name = getattr(layer, "name", None)
        label = f"{name!r} ({type(layer).__name__})" if isinstance(name, str) else type(layer).__name__
        raise ValueError(
            f"{label}: backward() was called before forward(): backward needs what forward saves; "
            f"call {call} first"
        )
    return saved


class Relu:
    """max(x, 0); backward passes dout where x > 0."""

    def __init__(self) -> None:
        self.mask = None

    def forward(self, x: Any) -> Any:
        self.mask = x <= 0
        return _zero_where(x, self.mask)

    def backward(self, dout: Any) -> Any:
        mask = require_forward(self, self.mask)
        return _zero_where(dout, mask)


def _zero_where(a: Any, mask: Any) -> Any:
    """A fresh copy of ``a`` with +0.0 where ``mask`` holds, the same bits as the book's ``out[mask] = 0``.

    Done as bit arithmetic (a AND (mask - 1), all ones where the mask is False): a masked select or
    assignment branches per element and, on the random signs of activations, mispredicts about half
    of them, which made it 10x slower than these three arithmetic passes (BENCHMARKS.md).
    """
    bits = np.dtype(f"uint{a.dtype.itemsize * 8}")
    keep = mask.astype(bits)
    keep -= 1
    keep &= a.view(bits)
    return keep.view(a.dtype)


class Sigmoid:
    """1 / (1 + exp(-x)); backward dout * y * (1 - y)."""

    def __init__(self) -> None:
        self.out = None

    def forward(self, x: Any) -> Any:
        xp = array_module(x)
        self.out = 1 / (1 + xp.exp(-x))
        return self.out

    def backward(self, dout: Any) -> Any:
        out = require_forward(self, self.out)
        return dout * (1.0 - out) * out


class Affine:
    """x (N, ...) flattened to (N, D), then x @ W + b with W (D, M), b (M,); dx keeps x's shape."""

    def __init__(self, W: Any, b: Any) -> None:
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x: Any) -> Any:
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"Affine: x has {x.shape[1]} features per sample (shape {tuple(self.original_x_shape)}) "
                f"but W has shape {tuple(self.W.shape)}; W must be (features, outputs)"
            )
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout: Any) -> Any:
        x = require_forward(self, self.x)
        dx = dout @ self.W.T
        self.dW = x.T @ dout
        self.db = dout.sum(axis=0)
        return dx.reshape(*self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax then cross-entropy; ``forward(x, t)`` with t as indices (N,) or one-hot (N, K)."""

    def __init__(self) -> None:
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x: Any, t: Any) -> Any:
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout: Any = 1) -> Any:
        """Gradient with respect to the scores x of ``forward(x, t)``: ``(softmax(x) - t) / N``, times dout."""
        y = require_forward(self, self.y, "forward(x, t)")
        dx = softmax_cross_entropy_backward(y, self.t)
        return dx * dout if not (isinstance(dout, numbers.Number) and dout == 1) else dx


class Dropout:
    """The book's (non-inverted) dropout. Train: x * mask with mask = rand > ratio; test: x * (1 - ratio).

    ``rng`` (a ``numpy.random.Generator``) makes the masks reproducible; by default the global
    ``numpy.random`` state is used, as in the book, so ``np.random.seed`` applies.
    """

    def __init__(self, dropout_ratio: float = 0.5, rng: Any = None) -> None:
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
        self.dropout_ratio = dropout_ratio
        self.rng = rng
        self.mask = None

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        if not train_flg:
            return x * (1.0 - self.dropout_ratio)
        xp = array_module(x)
        if xp is np:
            draw = self.rng.random(x.shape) if self.rng is not None else np.random.rand(*x.shape)  # noqa: NPY002 (the book's global RNG)
        else:
            draw = xp.random.rand(*x.shape)
        self.mask = draw > self.dropout_ratio
        return x * self.mask

    def backward(self, dout: Any) -> Any:
        return dout * require_forward(self, self.mask, "forward(x, train_flg=True)")


class BatchNormalization:
    """The book's batch normalisation: a 4-D input is flattened to (N, C*H*W) and normalised per element.

    For the usual per-channel normalisation of conv features use :class:`BatchNorm2d`.
    ``gamma``/``beta`` have shape (D,) for a flattened input of D features.
    """

    eps = 1e-6  # the book's 10e-7

    def __init__(
        self, gamma: Any, beta: Any, momentum: float = 0.9, running_mean: Any = None, running_var: Any = None
    ) -> None:
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.input_shape = None
        self.running_mean = running_mean
        self.running_var = running_var
        self.batch_size = None
        self.xc = None
        self.xn = None
        self.std = None
        self.dgamma = None
        self.dbeta = None

    def _to_2d(self, a: Any) -> Any:
        return a.reshape(a.shape[0], -1) if a.ndim != 2 else a

    def _from_2d(self, a2: Any) -> Any:
        return a2.reshape(*self.input_shape)

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        self.input_shape = x.shape
        x2 = self._to_2d(x)
        xp = array_module(x2)
        if self.running_mean is None:
            self.running_mean = xp.zeros(x2.shape[1], dtype=x2.dtype)
            self.running_var = xp.zeros(x2.shape[1], dtype=x2.dtype)
        if train_flg:
            mu = x2.mean(axis=0)
            xc = x2 - mu
            var = (xc**2).mean(axis=0)
            std = xp.sqrt(var + self.eps)
            self.batch_size, self.xc, self.std = x2.shape[0], xc, std
            self.xn = xc / std
            xn = self.xn
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            xn = (x2 - self.running_mean) / xp.sqrt(self.running_var + self.eps)
        return self._from_2d(self.gamma * xn + self.beta)

    def backward(self, dout: Any) -> Any:
        require_forward(self, self.xn, "forward(x, train_flg=True)")
        d2 = self._to_2d(dout)
        xp = array_module(d2)
        self.dbeta = d2.sum(axis=0)
        self.dgamma = (self.xn * d2).sum(axis=0)
        dxn = self.gamma * d2
        dxc = dxn / self.std
        dstd = -xp.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc = dxc + (2.0 / self.batch_size) * self.xc * dvar
        dmu = dxc.sum(axis=0)
        dx = dxc - dmu / self.batch_size
        return self._from_2d(dx)


class BatchNorm2d(BatchNormalization):
    """Per-channel batch normalisation of (N, C, H, W) features; ``gamma``/``beta`` have shape (C,).

    Statistics are taken over (N, H, W) for each channel, as in PyTorch's ``BatchNorm2d``.
    """

    def _to_2d(self, a: Any) -> Any:
        if a.ndim != 4:
            raise ValueError(f"BatchNorm2d needs a 4-D (N, C, H, W) input, got shape {tuple(a.shape)}")
        return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])

    def _from_2d(self, a2: Any) -> Any:
        n, c, h, w = self.input_shape
        xp = array_module(a2)
        return xp.ascontiguousarray(a2.reshape(n, h, w, c).transpose(0, 3, 1, 2))


def _bias_grad_like(b: Any, db: Any) -> Any:
    """db shaped like b: (F,) for an array b, a scalar for a scalar b."""
    if isinstance(b, numbers.Real) or (hasattr(b, "ndim") and b.ndim == 0):
        return db.sum()
    return db


class Convolution:
    """Convolution layer: x (N, C, H, W), W (F, C // groups, FH, FW), b (F,) -> (N, F, OH, OW).

    OH = (H + top + bottom - dilation*(FH - 1) - 1) // stride + 1 (OW likewise). ``pad`` takes every
    form :func:`fastconv.conv2d` takes: an int, an (h, w) pair, ``((top, bottom), (left, right))``,
    "valid" or "same". ``groups`` splits the channels into independent convolutions (``groups == C``:
    depthwise). ``layout="NHWC"``: x, the output and dx are channels-last, (N, H, W, C); W keeps its
    (F, C // groups, FH, FW) layout. ``algorithm`` (None: the process setting, "auto" by default) as in
    :func:`fastconv.conv2d`. ``need_dx=False`` (the first layer of a network, whose input needs no
    gradient): ``backward`` computes dW and db only and returns None.
    """

    def __init__(
        self,
        W: Any,
        b: Any,
        stride: IntOrPair = 1,
        pad: PadSpec = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        layout: str = "NCHW",
        *,
        algorithm: str | None = None,
        need_dx: bool = True,
        backend: str | None = None,
    ) -> None:
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.groups = groups
        self.layout = layout
        self.algorithm = algorithm
        self.need_dx = need_dx
        self.backend = backend
        self.x = None
        self.dW = None
        self.db = None

    def forward(self, x: Any) -> Any:
        self.x = x
        return F.conv2d(
            x,
            self.W,
            self.b,
            self.stride,
            self.pad,
            self.dilation,
            groups=self.groups,
            layout=self.layout,
            algorithm=self.algorithm,
            _layer_backend=self.backend,
        )

    def backward(self, dout: Any) -> Any:
        x = require_forward(self, self.x)
        dx, self.dW, db = F.conv2d_backward(
            dout,
            x,
            self.W,
            self.stride,
            self.pad,
            self.dilation,
            groups=self.groups,
            layout=self.layout,
            need_dx=self.need_dx,
            algorithm=self.algorithm,
            _layer_backend=self.backend,
        )
        self.db = _bias_grad_like(self.b, db)
        return dx


class Deconvolution:
    """Transposed convolution (PyTorch's ``ConvTranspose2d``): x (N, C_in, H, W), W (C_in, C_out // groups,
    FH, FW), b (C_out,) -> (N, C_out, OH, OW), the adjoint of a convolution in its input.

    OH = (H - 1)*stride - top - bottom + dilation*(FH - 1) + output_padding + 1 (OW likewise);
    ``pad`` takes the forms :class:`Convolution` takes and crops the output, ``output_padding``
    (an int or an (h, w) pair) adds rows/columns at the bottom/right. ``layout="NHWC"``: x, the
    output and dx are channels-last; W keeps its layout. ``backward`` returns dx and sets ``dW`` and
    ``db``; it runs as convolutions, so ``algorithm`` picks theirs (as in :func:`fastconv.conv2d`), and
    ``need_dx=False`` skips dx (``backward`` returns None).
    """

    def __init__(
        self,
        W: Any,
        b: Any,
        stride: IntOrPair = 1,
        pad: PadSpec = 0,
        output_padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        layout: str = "NCHW",
        *,
        algorithm: str | None = None,
        need_dx: bool = True,
        backend: str | None = None,
    ) -> None:
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.output_padding = output_padding
        self.dilation = dilation
        self.groups = groups
        self.layout = layout
        self.algorithm = algorithm
        self.need_dx = need_dx
        self.backend = backend
        self.x = None
        self.dW = None
        self.db = None

    def forward(self, x: Any) -> Any:
        self.x = x
        return F.conv_transpose2d(
            x,
            self.W,
            self.b,
            self.stride,
            self.pad,
            self.output_padding,
            self.dilation,
            groups=self.groups,
            layout=self.layout,
            _layer_backend=self.backend,
        )

    def backward(self, dout: Any) -> Any:
        x = require_forward(self, self.x)
        dx, self.dW, db = F.conv_transpose2d_backward(
            dout,
            x,
            self.W,
            self.stride,
            self.pad,
            self.output_padding,
            self.dilation,
            groups=self.groups,
            layout=self.layout,
            need_dx=self.need_dx,
            algorithm=self.algorithm,
            _layer_backend=self.backend,
        )
        self.db = _bias_grad_like(self.b, db)
        return dx


class Pooling:
    """Max pooling: x (N, C, H, W) -> (N, C, OH, OW); padding is -inf; no parameters.

    ``pad`` as :func:`fastconv.max_pool2d` takes it (int, pair, ((top, bottom), (left, right)),
    "valid", "same"); ``ceil_mode`` rounds the output size up as PyTorch does; ``layout="NHWC"``
    for channels-last x. The gradient of each window goes to its first maximum in row-major window
    order. The default stride is the book's, 2.
    """

    def __init__(
        self,
        pool_h: int,
        pool_w: int,
        stride: IntOrPair = 2,
        pad: PadSpec = 0,
        ceil_mode: bool = False,
        layout: str = "NCHW",
        *,
        dilation: IntOrPair = 1,
        backend: str | None = None,
    ) -> None:
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.ceil_mode = ceil_mode
        self.layout = layout
        self.dilation = dilation
        self.backend = backend
        self.x_shape: tuple[int, ...] | None = None
        self.arg_max = None

    def forward(self, x: Any) -> Any:
        self.x_shape = tuple(x.shape)
        out, self.arg_max = F.max_pool2d(
            x,
            (self.pool_h, self.pool_w),
            self.stride,
            self.pad,
            self.dilation,
            ceil_mode=self.ceil_mode,
            layout=self.layout,
            _layer_backend=self.backend,
        )
        return out

    def backward(self, dout: Any) -> Any:
        arg_max = require_forward(self, self.arg_max)
        return F.max_pool2d_backward(
            dout,
            arg_max,
            self.x_shape,
            (self.pool_h, self.pool_w),
            self.stride,
            self.pad,
            self.dilation,
            ceil_mode=self.ceil_mode,
            layout=self.layout,
            _layer_backend=self.backend,
        )


class AvgPooling:
    """Average pooling: x (N, C, H, W) -> (N, C, OH, OW); no parameters.

    ``pad`` and ``ceil_mode`` as :class:`Pooling`; the divisor is PyTorch's: the whole window
    (padding included, the part past the bottom/right padding of a ceil-mode window not) when
    ``count_include_pad``, else the input elements in the window. ``layout="NHWC"`` for
    channels-last x. The default stride is 2, as :class:`Pooling`'s.
    """

    def __init__(
        self,
        pool_h: int,
        pool_w: int,
        stride: IntOrPair = 2,
        pad: PadSpec = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        layout: str = "NCHW",
        *,
        backend: str | None = None,
    ) -> None:
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.layout = layout
        self.backend = backend
        self.x_shape: tuple[int, ...] | None = None

    def forward(self, x: Any) -> Any:
        self.x_shape = tuple(x.shape)
        return F.avg_pool2d(
            x,
            (self.pool_h, self.pool_w),
            self.stride,
            self.pad,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
            layout=self.layout,
            _layer_backend=self.backend,
        )

    def backward(self, dout: Any) -> Any:
        x_shape = require_forward(self, self.x_shape)
        return F.avg_pool2d_backward(
            dout,
            x_shape,
            (self.pool_h, self.pool_w),
            self.stride,
            self.pad,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
            layout=self.layout,
            _layer_backend=self.backend,
        )


class GlobalAvgPooling:
    """Mean over each channel's whole image: x (N, C, H, W) -> (N, C, 1, 1), or (N, H, W, C) ->
    (N, 1, 1, C) with ``layout="NHWC"``; no parameters. Flatten the result for a classifier head."""

    def __init__(self, layout: str = "NCHW", *, backend: str | None = None) -> None:
        self.layout = layout
        self.backend = backend
        self.x_shape: tuple[int, ...] | None = None

    def forward(self, x: Any) -> Any:
        self.x_shape = tuple(x.shape)
        return F.global_avg_pool2d(x, layout=self.layout, _layer_backend=self.backend)

    def backward(self, dout: Any) -> Any:
        x_shape = require_forward(self, self.x_shape)
        return F.global_avg_pool2d_backward(dout, x_shape, layout=self.layout, _layer_backend=self.backend)
