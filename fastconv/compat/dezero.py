"""DeZero's convolution and pooling functions computed by fastconv kernels.

DeZero is the framework of the book "Deep Learning from Scratch 3" (``pip install dezero``, or the
book's repository on ``sys.path``). This module gives drop-in replacements for the four functions of
``dezero.functions_conv`` that do the heavy work::

    conv2d(x, W, b=None, stride=1, pad=0)                  W (OC, C, KH, KW)
    deconv2d(x, W, b=None, stride=1, pad=0, outsize=None)  W (C, OC, KH, KW)
    pooling(x, kernel_size, stride=1, pad=0)               max pooling
    average_pooling(x, kernel_size, stride=1, pad=0)

as DeZero ``Function`` subclasses, so they build the same graph as DeZero's own (gradients through
``Variable.backward``, double backprop with ``create_graph=True``); only ``forward`` is replaced by
fastconv kernels. Use them directly, or swap them into DeZero::

    from fastconv.compat import dezero as fdz

    with fdz.patch():          # dezero.functions / dezero.functions_conv use fastconv here
        y = model(x)           # L.Conv2d, L.Deconv2d, F.pooling ... all go through fastconv
    fdz.install()              # the same for the rest of the process; fdz.uninstall() undoes it

Semantics are DeZero's (its ``functions_conv.py`` of version 0.0.13, the book's code):

* Sizes: ``OH = (H + 2*PH - KH) // SH + 1`` (DeZero's ``get_conv_outsize``, rounding down);
  ``deconv2d``'s default ``outsize`` is ``SH*(H - 1) + KH - 2*PH`` (``get_deconv_outsize``), and
  any ``outsize`` with ``get_conv_outsize(outsize) == H`` is accepted (the extra rows, at most
  ``SH - 1``, are the transposed convolution's output padding). ``stride``, ``pad``,
  ``kernel_size`` and ``outsize`` take an int or an (h, w) pair, like DeZero's ``pair``.
* Max pooling pads with zeros, not -inf: a window of negative numbers that touches the padding
  yields 0, and its gradient goes to the padding (so it is dropped). The argmax is the first
  maximum in the window's row-major (kh, kw) order, padding positions included (a NaN counts as
  the maximum, the first one winning, as ``numpy.argmax``). ``pooling``'s stride defaults to 1.
* Average pooling counts the padding: every window sum is divided by ``KH*KW``.
* Dtypes: conv2d and deconv2d return ``result_type(x, W)`` (the bias is added into that dtype, as
  DeZero's in-place ``y += b``); pooling keeps x's dtype; the max-pooling gradient has x's dtype;
  the weight gradient is ``result_type(gy, x)``; the average-pooling gradient has the dtype of
  ``gy / numpy.array(KH*KW)`` (DeZero divides by a 0-d integer array: float64 for a float32 ``gy``
  under NumPy 2's promotion rules, float32 under NumPy 1).

Where this module differs from DeZero, on purpose:

* ``AveragePooling``'s gradient is the mathematically correct one for every kernel. DeZero's own
  backward swaps KH and KW and raises IndexError for any non-square kernel; where it runs, its
  result equals ours.
* ``Conv2DGradW.backward`` (the gradient of a weight gradient, reached when one differentiates
  ``W.grad`` after ``backward(create_graph=True)``) uses the upstream gradient as the math requires.
  DeZero's passes a weak reference to its own output and raises TypeError; ``x.grad``'s double
  backprop, which DeZero supports, gives the same values as DeZero.
* ``Pooling2DWithIndexes`` has a backward (a third derivative of max pooling); DeZero's has none.
* Bad arguments raise ValueError or TypeError naming the argument, where DeZero fails inside
  NumPy, produces a broadcast result, or an assertion.

Inputs are never modified. CuPy arrays (``dezero.cuda.get_array_module``) run on fastconv's "cupy"
backend; NumPy arrays on the backend fastconv selects (``backend=`` is not taken: use
``fastconv.use_backend``, ``fastconv.set_backend`` or ``FASTCONV_BACKEND``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

import fastconv
from fastconv._shapes import pair as _checked_pair

__all__ = [
    "AveragePooling",
    "AveragePooling2DGrad",
    "Conv2DGradW",
    "Conv2d",
    "Deconv2d",
    "Pooling",
    "Pooling2DGrad",
    "Pooling2DWithIndexes",
    "average_pooling",
    "conv2d",
    "deconv2d",
    "import_dezero",
    "install",
    "installed",
    "patch",
    "pooling",
    "uninstall",
]


def _is_np_int_error(error: AttributeError) -> bool:
    """Whether ``error`` is NumPy refusing the removed alias ``numpy.int``."""
    text = str(error)
    return "numpy" in text and "'int'" in text


def import_dezero() -> Any:
    """Import and return the ``dezero`` package, also under NumPy >= 1.24 (NumPy 2 included).

    DeZero 0.0.13 from PyPI evaluates ``np.int`` when it is imported (a default argument in
    ``dezero/transforms.py``), an alias NumPy 1.24 removed. If ``import dezero`` fails that way,
    the half-imported ``dezero`` modules are dropped and the import is retried with ``numpy.int =
    int`` set for the duration of the import only: it is removed again afterwards (also when the
    import fails), so no other code sees it. The book's GitHub version has no such use and imports
    directly. (``transforms.ToInt``'s default dtype, bound during that import, is the builtin
    ``int``.) Note that DeZero's datasets still use ``np.int`` when *called* (``get_spiral`` /
    ``Spiral`` and ``CIFAR10`` in ``dezero.datasets``), so those fail under NumPy >= 1.24 whatever
    this function does; DeZero's functions, layers, models and optimizers do not.

    Raises ImportError, saying how to get DeZero, when it is not installed.
    """
    try:
        import dezero  # type: ignore[import-untyped]
    except ModuleNotFoundError as error:
        if error.name != "dezero":
            raise
        raise ImportError(
            "fastconv.compat.dezero needs DeZero, which is not installed: run `pip install dezero` "
            "(or `pip install fastconv[dezero]`), or put the book's repository "
            "(https://github.com/oreilly-japan/deep-learning-from-scratch-3) on sys.path"
        ) from error
    except AttributeError as error:
        if not _is_np_int_error(error):
            raise
        # Submodules imported before the failure stay in sys.modules, bound to the failed package
        # object; a clean retry needs them gone.
        for name in [m for m in sys.modules if m == "dezero" or m.startswith("dezero.")]:
            del sys.modules[name]
        added = "int" not in vars(np)
        if added:
            setattr(np, "int", int)  # noqa: B010  (a literal np.int would be refused by linters and mypy)
        try:
            import dezero  # type: ignore[import-untyped]
        finally:
            if added:
                delattr(np, "int")
    return dezero


dezero = import_dezero()
# Submodules through importlib, after import_dezero (which may need the np.int shim).
_core = importlib.import_module("dezero.core")
_cuda = importlib.import_module("dezero.cuda")
_functions = importlib.import_module("dezero.functions")
_functions_conv = importlib.import_module("dezero.functions_conv")
Function: Any = _core.Function  # Any: DeZero has no type information
_Variable: Any = _core.Variable


# =============================================================================
# Argument checks and helpers
# =============================================================================
def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """DeZero's ``pair`` (an int, or an (h, w) pair), refusing bad values with an error naming ``name``."""
    return _checked_pair(value, name, minimum=minimum)


def _backend(a: Any) -> str | None:
    """fastconv's "cupy" backend for CuPy arrays (DeZero's own test), else fastconv's selection."""
    return None if _cuda.get_array_module(a) is np else "cupy"


def _check_4d(a: Any, name: str, layout: str) -> None:
    if getattr(a, "ndim", None) != 4:
        shape = getattr(a, "shape", None)
        raise ValueError(f"{name} must be 4-D {layout}, got shape {shape}")


def _check_window(x_shape: tuple[int, ...], kernel: tuple[int, int], pad: tuple[int, int], what: str) -> None:
    """Refuse a kernel larger than the padded input (DeZero would fail inside NumPy, or return nothing)."""
    for axis, size, k, p in zip(("height", "width"), x_shape[2:], kernel, pad):
        if k > size + 2 * p:
            raise ValueError(
                f"{what} {axis} {k} is larger than the padded input {axis} {size + 2 * p} "
                f"(input {size}, pad {p}); use a smaller kernel or more padding"
            )


def _zero_pad(a: Any, pad: tuple[int, int]) -> Any:
    """``a`` with ``pad`` zero rows/columns on each side (a itself when there is nothing to pad)."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return a
    xp = _cuda.get_array_module(a)
    return xp.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _crop(a: Any, shape: tuple[int, ...], pad: tuple[int, int]) -> Any:
    ph, pw = pad
    if ph == 0 and pw == 0:
        return a
    return a[:, :, ph : ph + shape[2], pw : pw + shape[3]]


def _fusable(gy: Any, x: Any, W: Any) -> bool:
    """Whether a convolution's backward may be one fastconv call instead of DeZero's graph of three.

    Only when no graph is being built (``backward()`` without ``create_graph``, DeZero's default: it
    runs the backward with ``enable_backprop`` off), so nobody differentiates the gradients, and when
    gy, x and W share a dtype, where the fused call gives DeZero's dtypes (mixed ones take the graph,
    whose functions reproduce DeZero's promotions). One call shares fastconv's relayouts and im2col
    between gx and gW."""
    if _core.Config.enable_backprop:
        return False
    return gy.data.dtype == x.data.dtype == W.data.dtype


# =============================================================================
#  conv2d / deconv2d
# =============================================================================
class Conv2d(Function):
    """DeZero's Conv2d: y[n, o, i, j] = b[o] + sum_{c,p,q} x_pad[n, c, i*SH + p, j*SW + q] * W[o, c, p, q]."""

    def __init__(self, stride: Any = 1, pad: Any = 0) -> None:
        super().__init__()
        self.stride = _pair(stride, "stride", 1)
        self.pad = _pair(pad, "pad", 0)

    def forward(self, x: Any, W: Any, b: Any) -> Any:
        _check_4d(x, "x", "(N, C, H, W)")
        _check_4d(W, "W", "(OC, C, KH, KW)")
        if x.shape[1] != W.shape[1]:
            raise ValueError(
                f"channel mismatch: x {tuple(x.shape)} has {x.shape[1]} channels but W {tuple(W.shape)} "
                f"expects {W.shape[1]}; conv2d's W is (OC, C, KH, KW)"
            )
        _check_window(x.shape, W.shape[2:], self.pad, "W's kernel")
        if b is not None and tuple(getattr(b, "shape", ())) != (W.shape[0],):
            raise ValueError(
                f"b must have shape ({W.shape[0]},) (one bias per output channel of W {tuple(W.shape)}), "
                f"got shape {getattr(b, 'shape', None)}"
            )
        # fastconv adds the bias in result_type(x, W), DeZero's in-place `y += b` likewise.
        return fastconv.conv2d(x, W, b, self.stride, self.pad, backend=_backend(x))

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, W, b = self.inputs
        if _fusable(gy, x, W):
            dx, dW, db = fastconv.conv2d_backward(
                gy.data, x.data, W.data, self.stride, self.pad, backend=_backend(x.data)
            )
            return _Variable(dx), _Variable(dW), None if b.data is None else _Variable(db)
        gx = deconv2d(gy, W, b=None, stride=self.stride, pad=self.pad, outsize=(x.shape[2], x.shape[3]))
        gW = Conv2DGradW(self)(x, gy)
        gb = None
        if b.data is not None:
            gb = gy.sum(axis=(0, 2, 3))
        return gx, gW, gb


def conv2d(x: Any, W: Any, b: Any = None, stride: Any = 1, pad: Any = 0) -> Any:
    """DeZero's ``F.conv2d`` on fastconv: x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> (N, OC, OH, OW)."""
    return Conv2d(stride, pad)(x, W, b)


def _deconv_output_padding(h: int, out: int, k: int, s: int, p: int, axis: str) -> int:
    """The output padding that makes a transposed convolution of an input ``h`` give ``out`` rows.

    DeZero accepts any ``out`` whose convolution size ``(out + 2p - k) // s + 1`` is ``h``: that is
    ``out = s*(h - 1) + k - 2p + e`` with ``0 <= e < s``.
    """
    base = s * (h - 1) + k - 2 * p
    e = out - base
    if out < 1 or not 0 <= e < s:
        lo = max(base, 1)
        hi = base + s - 1
        valid = f"{lo}" if lo == hi else f"{lo} to {hi}"
        if hi < 1:
            valid = "none (the kernel is smaller than twice the padding)"
        raise ValueError(
            f"outsize {axis} {out} cannot come from input {axis} {h} with kernel {k}, stride {s}, pad {p}: "
            f"deconv2d needs (outsize + 2*pad - kernel) // stride + 1 == input size; valid {axis}s: {valid}"
        )
    return e


class Deconv2d(Function):
    """DeZero's Deconv2d, the transposed convolution (adjoint of Conv2d with the same W):
    y[n, o, i*SH + p - PH, j*SW + q - PW] += x[n, c, i, j] * W[c, o, p, q], plus b[o]."""

    def __init__(self, stride: Any = 1, pad: Any = 0, outsize: Any = None) -> None:
        super().__init__()
        self.stride = _pair(stride, "stride", 1)
        self.pad = _pair(pad, "pad", 0)
        self.outsize = None if outsize is None else _pair(outsize, "outsize", 1)

    def forward(self, x: Any, W: Any, b: Any) -> Any:
        _check_4d(x, "x", "(N, C, H, W)")
        _check_4d(W, "W", "(C, OC, KH, KW)")
        if x.shape[1] != W.shape[0]:
            raise ValueError(
                f"channel mismatch: x {tuple(x.shape)} has {x.shape[1]} channels but W {tuple(W.shape)} "
                f"expects {W.shape[0]}; deconv2d's W is (C, OC, KH, KW)"
            )
        if b is not None and tuple(getattr(b, "shape", ())) != (W.shape[1],):
            raise ValueError(
                f"b must have shape ({W.shape[1]},) (one bias per output channel, W.shape[1] of W "
                f"{tuple(W.shape)}), got shape {getattr(b, 'shape', None)}"
            )
        (kh, kw), (sh, sw), (ph, pw) = W.shape[2:], self.stride, self.pad
        h, w = x.shape[2:]
        if self.outsize is None:
            out_h, out_w = sh * (h - 1) + kh - 2 * ph, sw * (w - 1) + kw - 2 * pw
            for axis, o in (("height", out_h), ("width", out_w)):
                if o < 1:
                    raise ValueError(
                        f"deconv2d's output {axis} would be {o} (input {x.shape[2:]}, kernel {(kh, kw)}, "
                        f"stride {self.stride}, pad {self.pad}); use less padding"
                    )
        else:
            out_h, out_w = self.outsize
        op = (
            _deconv_output_padding(h, out_h, kh, sh, ph, "height"),
            _deconv_output_padding(w, out_w, kw, sw, pw, "width"),
        )
        self._output_padding = op
        return fastconv.conv_transpose2d(x, W, b, self.stride, self.pad, op, backend=_backend(x))

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, W, b = self.inputs
        if _fusable(gy, x, W):
            dx, dW, db = fastconv.conv_transpose2d_backward(
                gy.data, x.data, W.data, self.stride, self.pad, self._output_padding, backend=_backend(x.data)
            )
            return _Variable(dx), _Variable(dW), None if b.data is None else _Variable(db)
        gx = conv2d(gy, W, b=None, stride=self.stride, pad=self.pad)
        gW = Conv2DGradW(self)(gy, x)
        gb = None
        if b.data is not None:
            gb = gy.sum(axis=(0, 2, 3))
        return gx, gW, gb


def deconv2d(x: Any, W: Any, b: Any = None, stride: Any = 1, pad: Any = 0, outsize: Any = None) -> Any:
    """DeZero's ``F.deconv2d`` on fastconv: x (N, C, H, W), W (C, OC, KH, KW), b (OC,) -> (N, OC, OH, OW)."""
    return Deconv2d(stride, pad, outsize)(x, W, b)


class Conv2DGradW(Function):
    """The weight gradient of a convolution from x to gy: gW[o, c, p, q] = sum_{n,i,j} gy[n, o, i, j] *
    x_pad[n, c, i*SH + p, j*SW + q] (for a Deconv2d, called as (gy, x) with the roles swapped)."""

    def __init__(self, conv2d: Any) -> None:
        W = conv2d.inputs[1]
        self.kernel_size = tuple(W.shape[2:])
        self.w_shape = tuple(W.shape)
        self.stride = conv2d.stride
        self.pad = conv2d.pad

    def forward(self, x: Any, gy: Any) -> Any:
        xp = _cuda.get_array_module(x)
        dtype = np.result_type(x.dtype, gy.dtype)  # DeZero's tensordot(gy, col(x))
        # fastconv wants W for its shape only when dx is not needed: zeros of the result dtype.
        W = xp.zeros(self.w_shape, dtype=dtype)
        _, gW, _ = fastconv.conv2d_backward(
            gy, x, W, self.stride, self.pad, need_dx=False, backend=_backend(x)
        )
        return gW

    def backward(self, ggW: Any) -> tuple[Any, Any]:
        # d<gW, ggW>/dx and /dgy: the transposed and the plain convolution with ggW as the weight.
        x, gy = self.inputs
        gx = deconv2d(gy, ggW, stride=self.stride, pad=self.pad, outsize=(x.shape[2], x.shape[3]))
        ggy = conv2d(x, ggW, stride=self.stride, pad=self.pad)
        return gx, ggy


# =============================================================================
#  pooling (max pooling) / average_pooling
# =============================================================================
class Pooling(Function):
    """DeZero's max pooling: y[n, c, i, j] = max_{p,q} x_zeropad[n, c, i*SH + p, j*SW + q]; indexes the
    first (p*KW + q) reaching it."""

    def __init__(self, kernel_size: Any, stride: Any = 1, pad: Any = 0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.pad = _pair(pad, "pad", 0)
        self.indexes: Any = None

    def forward(self, x: Any) -> Any:
        _check_4d(x, "x", "(N, C, H, W)")
        _check_window(x.shape, self.kernel_size, self.pad, "kernel_size")
        self.input_shape = tuple(x.shape)
        self.dtype = x.dtype
        # DeZero pads with zeros (im2col), so padding can win the max: pad explicitly, pool without.
        y, self.indexes = fastconv.max_pool2d(
            _zero_pad(x, self.pad), self.kernel_size, self.stride, 0, backend=_backend(x)
        )
        return y

    def backward(self, gy: Any) -> Any:
        return Pooling2DGrad(self)(gy)


class Pooling2DGrad(Function):
    """Max pooling's gradient: gx_zeropad[n, c, i*SH + p, j*SW + q] += gy[n, c, i, j] where p*KW + q is the
    window's index; the padding's share is dropped. gx has x's dtype (DeZero)."""

    def __init__(self, mpool2d: Pooling) -> None:
        self.mpool2d = mpool2d
        self.kernel_size = mpool2d.kernel_size
        self.stride = mpool2d.stride
        self.pad = mpool2d.pad
        self.input_shape = mpool2d.input_shape
        self.dtype = mpool2d.dtype
        self.indexes = mpool2d.indexes

    def forward(self, gy: Any) -> Any:
        n, c, h, w = self.input_shape
        (ph, pw), (kh, kw) = self.pad, self.kernel_size
        padded = (n, c, h + 2 * ph, w + 2 * pw)
        # DeZero scatters gy into an array of x's dtype before summing: cast first, as it does.
        gx = fastconv.max_pool2d_backward(
            gy.astype(self.dtype, copy=False),
            self.indexes,
            padded,
            (kh, kw),
            self.stride,
            0,
            backend=_backend(gy),
        )
        return _crop(gx, self.input_shape, self.pad)

    def backward(self, ggx: Any) -> Any:
        return Pooling2DWithIndexes(self.mpool2d)(ggx)


class Pooling2DWithIndexes(Function):
    """The pooling of an array at the argmax of an earlier max pooling:
    y[n, c, i, j] = a_zeropad[n, c, i*SH + p, j*SW + q] with p*KW + q = indexes[n, c, i, j]."""

    def __init__(self, mpool2d: Pooling) -> None:
        self.mpool2d = mpool2d
        self.kernel_size = mpool2d.kernel_size
        self.stride = mpool2d.stride
        self.pad = mpool2d.pad
        self.input_shape = mpool2d.input_shape
        self.indexes = mpool2d.indexes

    def forward(self, a: Any) -> Any:
        if tuple(a.shape) != self.input_shape:
            raise ValueError(
                f"the array must have the pooled input's shape {self.input_shape}, got {a.shape}"
            )
        xp = _cuda.get_array_module(a)
        padded = _zero_pad(a, self.pad)
        idx = self.indexes
        n, c, oh, ow = idx.shape
        kw = self.kernel_size[1]
        sh, sw = self.stride
        rows = xp.arange(oh).reshape(1, 1, oh, 1) * sh + idx // kw
        cols = xp.arange(ow).reshape(1, 1, 1, ow) * sw + idx % kw
        return padded[xp.arange(n).reshape(n, 1, 1, 1), xp.arange(c).reshape(1, c, 1, 1), rows, cols]

    def backward(self, gy: Any) -> Any:
        # The gather's adjoint is the scatter of Pooling2DGrad (DeZero defines no third derivative).
        return Pooling2DGrad(self.mpool2d)(gy)


def pooling(x: Any, kernel_size: Any, stride: Any = 1, pad: Any = 0) -> Any:
    """DeZero's ``F.pooling`` (max pooling, zero padding, stride 1 by default) on fastconv."""
    return Pooling(kernel_size, stride, pad)(x)


def _fits_half(pad: tuple[int, int], kernel: tuple[int, int]) -> bool:
    """Whether fastconv's pooling takes this pad itself (at most half the window)."""
    return all(2 * p <= k for p, k in zip(pad, kernel))


class AveragePooling(Function):
    """DeZero's average pooling: y[n, c, i, j] = sum_{p,q} x_zeropad[n, c, i*SH + p, j*SW + q] / (KH*KW)."""

    def __init__(self, kernel_size: Any, stride: Any = 1, pad: Any = 0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.pad = _pair(pad, "pad", 0)
        self.input_shape: tuple[int, ...] | None = None

    def forward(self, x: Any) -> Any:
        _check_4d(x, "x", "(N, C, H, W)")
        _check_window(x.shape, self.kernel_size, self.pad, "kernel_size")
        self.input_shape = tuple(x.shape)
        k, s = self.kernel_size, self.stride
        if _fits_half(self.pad, k):
            return fastconv.avg_pool2d(x, k, s, self.pad, count_include_pad=True, backend=_backend(x))
        # DeZero takes any padding; windows of padding alone average to 0
        return fastconv.avg_pool2d(
            _zero_pad(x, self.pad), k, s, 0, count_include_pad=True, backend=_backend(x)
        )

    def backward(self, gy: Any) -> Any:
        return AveragePooling2DGrad(self)(gy)


class AveragePooling2DGrad(Function):
    """Average pooling's gradient: gx_zeropad[n, c, i*SH + p, j*SW + q] += gy[n, c, i, j] / (KH*KW)."""

    def __init__(self, apool2d: AveragePooling) -> None:
        self.kernel_size = apool2d.kernel_size
        self.stride = apool2d.stride
        self.pad = apool2d.pad
        assert apool2d.input_shape is not None, "AveragePooling's forward runs before its backward"
        self.input_shape: tuple[int, ...] = apool2d.input_shape

    def forward(self, gy: Any) -> Any:
        kh, kw = self.kernel_size
        # DeZero computes gy / (KH*KW) with the divisor a 0-d integer array: follow its promotion.
        gy = gy.astype(np.result_type(gy.dtype, np.asarray(kh * kw)), copy=False)
        k, s, shape = self.kernel_size, self.stride, self.input_shape
        n, c, h, w = shape
        if _fits_half(self.pad, k):
            return fastconv.avg_pool2d_backward(gy, (n, c, h, w), k, s, self.pad, backend=_backend(gy))
        padded = (n, c, h + 2 * self.pad[0], w + 2 * self.pad[1])
        gx = fastconv.avg_pool2d_backward(gy, padded, k, s, 0, backend=_backend(gy))
        return _crop(gx, shape, self.pad)

    def backward(self, ggx: Any) -> Any:
        # The gradient map is the adjoint of average pooling, so its own adjoint is average pooling.
        return AveragePooling(self.kernel_size, self.stride, self.pad)(ggx)


def average_pooling(x: Any, kernel_size: Any, stride: Any = 1, pad: Any = 0) -> Any:
    """DeZero's ``F.average_pooling`` (the padding counts in every mean, stride 1 by default) on fastconv."""
    return AveragePooling(kernel_size, stride, pad)(x)


# =============================================================================
#  Swapping these into DeZero
# =============================================================================
_NAMES = ("conv2d", "deconv2d", "pooling", "average_pooling")
_MODULES = (_functions, _functions_conv)
_OURS = {"conv2d": conv2d, "deconv2d": deconv2d, "pooling": pooling, "average_pooling": average_pooling}
# DeZero's own functions as this module found them, for install() when it runs inside patch().
_DEZERO = {(m.__name__, name): getattr(m, name) for m in _MODULES for name in _NAMES}
_installed: dict[tuple[str, str], Any] | None = None  # what install() replaced, for uninstall()


def _snapshot() -> dict[tuple[str, str], Any]:
    return {(m.__name__, name): getattr(m, name) for m in _MODULES for name in _NAMES}


def _apply(values: dict[tuple[str, str], Any]) -> None:
    for m in _MODULES:
        for name in _NAMES:
            setattr(m, name, values[(m.__name__, name)])


def _ours() -> dict[tuple[str, str], Any]:
    return {(m.__name__, name): _OURS[name] for m in _MODULES for name in _NAMES}


@contextlib.contextmanager
def patch() -> Iterator[None]:
    """Within the block, ``dezero.functions`` and ``dezero.functions_conv`` use this module's conv2d,
    deconv2d, pooling and average_pooling (so do ``L.Conv2d``, ``L.Deconv2d`` and DeZero's models,
    which look ``F.conv2d`` up at call time). On exit, also by an exception, the exact objects that
    were there on entry come back; blocks nest."""
    saved = _snapshot()
    _apply(_ours())
    try:
        yield
    finally:
        _apply(saved)


def install() -> None:
    """Swap this module's functions into DeZero for the rest of the process (see :func:`patch`);
    a second call does nothing. :func:`uninstall` restores what was there."""
    global _installed
    if _installed is None:
        current = _snapshot()
        # Inside patch() the current functions are ours already; uninstall() must restore DeZero's.
        _installed = {key: _DEZERO[key] if fn is _OURS[key[1]] else fn for key, fn in current.items()}
    _apply(_ours())


def uninstall() -> None:
    """Undo :func:`install`: the functions it replaced come back (nothing happens when not installed)."""
    global _installed
    if _installed is not None:
        _apply(_installed)
        _installed = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed is not None
