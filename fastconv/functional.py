"""The functional API: argument checks once, then dispatch to the selected backend.

Output sizes (floor mode, cross-correlation, as in the classic layers and PyTorch)::

    OH = (H + 2*pad_h - dilation_h*(kh - 1) - 1) // stride_h + 1      (OW likewise)

Dtypes: float32 and float64 are computed as they are; float16 is a storage type (computed in
float32, returned as float16); x and W of different float dtypes are promoted as NumPy
promotes them. Integer, bool and complex arrays are refused.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastconv import _algorithms, _arrays, _registry
from fastconv._shapes import (
    IntOrPair,
    Pair,
    bad_argmax_error,
    conv_output_size,
    effective_kernel,
    pair,
    positive_int,
    shape4,
)

_COMPUTE = {np.dtype(np.float16): np.dtype(np.float32)}
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _check_array(name: str, a: Any, ndim: int | None = None, what: str = "") -> None:
    if not (hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "ndim")):
        raise TypeError(
            f"{name} must be an array (numpy.ndarray or the backend's array type), got {type(a).__name__}"
        )
    if not isinstance(a.dtype, np.dtype):  # e.g. a torch.Tensor, whose dtype is torch's own
        raise TypeError(
            f"{name} is a {type(a).__module__}.{type(a).__name__}, not a NumPy or CuPy array; convert it "
            f"first (numpy.asarray({name}), or {name}.detach().cpu().numpy() for a torch.Tensor)"
        )
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, whose mask fastconv would ignore; pass {name}.filled(value)"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(a.shape)} ({a.ndim}-D)")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must have a floating dtype (float16, float32 or float64), got {a.dtype}")


def _result_dtype(*arrays: Any) -> tuple[np.dtype, np.dtype]:
    """(dtype returned to the caller, dtype the backend computes in)."""
    out = np.result_type(*[a.dtype for a in arrays if a is not None])
    return out, _COMPUTE.get(out, out)


def _select(backend: str | None, layer_backend: str | None, arrays: dict[str, Any]) -> Any:
    first = next(a for a in arrays.values() if a is not None)
    impl = _registry.select(backend, layer_backend, first)
    for name, a in arrays.items():
        if a is not None and not impl.owns(a):
            raise TypeError(
                f"{name} is a {type(a).__module__}.{type(a).__name__}, but backend {impl.name!r} needs its own "
                f"array type: move it with fastconv.to_device({name}, backend={impl.name!r}) (or fastconv.to_host), "
                "or use the 'auto' backend, which dispatches by array type"
            )
    return impl


def _prep(impl: Any, a: Any, dtype: np.dtype) -> Any:
    """C-contiguous array of the compute dtype (a copy only when needed; inputs are never modified)."""
    return impl.xp.ascontiguousarray(a, dtype=dtype)


def _bias(impl: Any, b: Any, n_filters: int, dtype: np.dtype) -> Any:
    if b is None:
        return None
    if isinstance(b, numbers.Real) and not isinstance(b, bool):
        return impl.xp.full((n_filters,), b, dtype=dtype)
    _check_array("b", b)
    if tuple(b.shape) not in ((n_filters,), ()):
        raise ValueError(
            f"b must have shape ({n_filters},) (one bias per filter of W) or be a scalar, "
            f"got shape {tuple(b.shape)}"
        )
    if b.ndim == 0:
        return impl.xp.full((n_filters,), b, dtype=dtype)
    return _prep(impl, b, dtype)


def _conv_args(
    x: Any, W: Any, stride: IntOrPair, pad: IntOrPair, dilation: IntOrPair
) -> tuple[Pair, Pair, Pair, Pair]:
    _check_array("x", x, 4, "(N, C, H, W)")
    _check_array("W", W, 4, "(F, C, kh, kw)")
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f"channel mismatch: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but W expects "
            f"{W.shape[1]} (shape {tuple(W.shape)}); W must be (F, C, kh, kw) with C = x.shape[1]"
        )
    if W.shape[0] < 1 or W.shape[2] < 1 or W.shape[3] < 1:
        raise ValueError(
            f"W must have at least one filter and a kernel of at least 1x1, got shape {tuple(W.shape)}"
        )
    _check_image_size("x", x.shape)
    s = pair(stride, "stride", minimum=1)
    p = pair(pad, "pad", minimum=0)
    d = pair(dilation, "dilation", minimum=1)
    out_hw = conv_output_size(tuple(x.shape[2:]), tuple(W.shape[2:]), s, p, d)
    return s, p, d, out_hw


def _check_image_size(name: str, shape: tuple[int, ...]) -> None:
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name} must have a height and width of at least 1, got shape {tuple(shape)}")


def conv2d(
    x: Any,
    W: Any,
    b: Any = None,
    stride: IntOrPair = 1,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    algorithm: str | None = None,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """2-D convolution (cross-correlation): x (N, C, H, W), W (F, C, kh, kw), b (F,) -> (N, F, OH, OW).

    ``algorithm``: "auto" (the default, through ``fastconv.configure``), "gemm", "winograd",
    "winograd2" or "direct" (see :func:`conv_algorithm`); a named one that cannot run this shape on
    this backend raises ValueError.
    """
    s, p, d, out_hw = _conv_args(x, W, stride, pad, dilation)
    out_dtype, dtype = _result_dtype(x, W)
    impl = _select(backend, _layer_backend, {"x": x, "W": W, "b": b if hasattr(b, "shape") else None})
    bias = _bias(impl, b, W.shape[0], dtype)
    if x.size == 0:  # an empty batch, or no channels: every output is the bias
        y = impl.xp.zeros((x.shape[0], W.shape[0], *out_hw), dtype=dtype)
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)
    else:
        xc, Wc = _prep(impl, x, dtype), _prep(impl, W, dtype)

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_forward, name, xc, Wc, bias, s, p, d)

        name = _algorithms.resolve(impl, algorithm, "forward", x.shape, W.shape, s, p, d, dtype, run)
        y = run(name)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


def _call(impl: Any, kernel: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """A backend's conv kernel with ``algorithm=name``; backends that declare no algorithms get none."""
    if hasattr(impl, "algorithms"):
        return kernel(*args, algorithm=name, **kwargs)
    return kernel(*args, **kwargs)


def conv_algorithm(
    x_shape: tuple[int, int, int, int],
    W_shape: tuple[int, int, int, int],
    stride: IntOrPair = 1,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    dtype: Any = "float32",
    *,
    direction: str = "forward",
    algorithm: str | None = None,
    backend: str | None = None,
) -> str:
    """The algorithm a conv2d (``direction="forward"``) or conv2d_backward call with these shapes would
    run on ``backend`` (the selected one by default) under the current settings.

    With autotuning on, the tuned choice when this shape was tuned already, else the rules' choice
    (the first call tunes it).
    """
    xs, ws = shape4(x_shape, "x_shape"), shape4(W_shape, "W_shape")
    if direction not in _algorithms.DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    s = pair(stride, "stride", minimum=1)
    p = pair(pad, "pad", minimum=0)
    d = pair(dilation, "dilation", minimum=1)
    conv_output_size(xs[2:], ws[2:], s, p, d)
    dt = _COMPUTE.get(np.dtype(dtype), np.dtype(dtype))
    impl = _registry.select(backend, None, None)
    args = (direction, xs, ws, s, p, d, dt)
    if algorithm is None and _algorithms.settings.algorithm == "auto" and _algorithms.settings.autotune:
        hit = _algorithms.tuner.cached(impl, *args)
        if hit is not None:
            return hit
    return _algorithms.resolve(impl, algorithm, direction, xs, ws, s, p, d, dt, None)


def conv2d_backward(
    dout: Any,
    x: Any,
    W: Any,
    stride: IntOrPair = 1,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    need_dx: bool = True,
    algorithm: str | None = None,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv2d`: dout (N, F, OH, OW) -> dx (N, C, H, W) (None if not need_dx),
    dW (F, C, kh, kw), db (F,). ``algorithm`` as for :func:`conv2d`."""
    s, p, d, out_hw = _conv_args(x, W, stride, pad, dilation)
    _check_array("dout", dout, 4, "(N, F, OH, OW)")
    expected = (x.shape[0], W.shape[0], *out_hw)
    if tuple(dout.shape) != expected:
        raise ValueError(f"dout must have the forward output's shape {expected}, got {tuple(dout.shape)}")
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx must be True or False, got {need_dx!r}")
    out_dtype, dtype = _result_dtype(dout, x, W)
    impl = _select(backend, _layer_backend, {"dout": dout, "x": x, "W": W})
    if x.size == 0:  # nothing to sum over: zero gradients of the right shapes, db from dout
        xp = impl.xp
        grads = (
            xp.zeros(x.shape, dtype=dtype) if need_dx else None,
            xp.zeros(W.shape, dtype=dtype),
            xp.asarray(dout, dtype=dtype).sum(axis=(0, 2, 3)),
        )
    else:
        dc, xc, Wc = _prep(impl, dout, dtype), _prep(impl, x, dtype), _prep(impl, W, dtype)

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_backward, name, dc, xc, Wc, s, p, d, need_dx=bool(need_dx))

        name = _algorithms.resolve(impl, algorithm, "backward", x.shape, W.shape, s, p, d, dtype, run)
        grads = run(name)
    return tuple(g if g is None or g.dtype == out_dtype else g.astype(out_dtype) for g in grads)


def _pool_args(
    x_shape: tuple[int, ...],
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    pad: IntOrPair,
    dilation: IntOrPair,
) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    k = pair(kernel_size, "kernel_size", minimum=1)
    s = k if stride is None else pair(stride, "stride", minimum=1)
    p = pair(pad, "pad", minimum=0)
    d = pair(dilation, "dilation", minimum=1)
    for axis, kk, pp, dd in zip(("height", "width"), k, p, d):
        if 2 * pp > effective_kernel(kk, dd):
            raise ValueError(
                f"pad {pp} must be at most half the pooling window {axis} {effective_kernel(kk, dd)} "
                f"(kernel {kk}, dilation {dd}), or some windows would hold only padding"
            )
    out_hw = conv_output_size(tuple(x_shape[2:]), k, s, p, d)
    return k, s, p, d, out_hw


def max_pool2d(
    x: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> tuple[Any, Any]:
    """Max pooling: x (N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) int32).

    ``stride`` defaults to ``kernel_size``; padding is -inf. ``argmax`` holds the window-local
    index i*kw + j of each window's first maximum in row-major order (NaN counts as maximum).
    """
    _check_array("x", x, 4, "(N, C, H, W)")
    _check_image_size("x", x.shape)
    (kh, kw), s, p, d, out_hw = _pool_args(x.shape, kernel_size, stride, pad, dilation)
    out_dtype, dtype = _result_dtype(x)
    impl = _select(backend, _layer_backend, {"x": x})
    if x.size == 0:
        shape = (*x.shape[:2], *out_hw)
        return impl.xp.empty(shape, dtype=out_dtype), impl.xp.empty(shape, dtype=np.int32)
    y, argmax = impl.maxpool2d_forward(_prep(impl, x, dtype), kh, kw, s, p, d)
    return (y if y.dtype == out_dtype else y.astype(out_dtype)), argmax


def max_pool2d_backward(
    dout: Any,
    argmax: Any,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Gradient of :func:`max_pool2d`: dout, argmax (N, C, OH, OW) -> dx (N, C, H, W).

    Raises ValueError when ``argmax`` holds a value outside [0, kh*kw) (each backend checks it).
    """
    x_shape = shape4(x_shape, "x_shape")
    (kh, kw), s, p, d, out_hw = _pool_args(x_shape, kernel_size, stride, pad, dilation)
    _check_array("dout", dout, 4, "(N, C, OH, OW)")
    expected = (*x_shape[:2], *out_hw)
    if tuple(dout.shape) != expected:
        raise ValueError(f"dout must have the forward output's shape {expected}, got {tuple(dout.shape)}")
    if not (hasattr(argmax, "shape") and isinstance(getattr(argmax, "dtype", None), np.dtype)):
        raise TypeError(f"argmax must be the integer array max_pool2d returned, got {type(argmax).__name__}")
    if tuple(argmax.shape) != expected or argmax.dtype.kind not in "iu":
        raise ValueError(
            f"argmax must be the integer array max_pool2d returned, shape {expected}; "
            f"got shape {tuple(argmax.shape)} dtype {argmax.dtype}"
        )
    out_dtype, dtype = _result_dtype(dout)
    impl = _select(backend, _layer_backend, {"dout": dout, "argmax": argmax})
    if dout.size == 0:
        return impl.xp.zeros(x_shape, dtype=out_dtype)
    if argmax.dtype != np.int32:  # a wider or unsigned integer: cast only values that fit
        xp = impl.xp
        if argmax.min() < 0 or argmax.max() >= kh * kw:
            raise bad_argmax_error(argmax, kh * kw)
        argmax = xp.asarray(argmax, dtype=np.int32)
    dx = impl.maxpool2d_backward(
        _prep(impl, dout, dtype), _prep(impl, argmax, np.int32), x_shape, kh, kw, s, p, d
    )
    return dx if dx.dtype == out_dtype else dx.astype(out_dtype)


def im2col(
    input_data: Any,
    filter_h: int,
    filter_w: int,
    stride: IntOrPair = 1,
    pad: IntOrPair = 0,
    *,
    dilation: IntOrPair = 1,
    backend: str | None = None,
) -> Any:
    """The book's im2col: input_data (N, C, H, W) -> col (N*OH*OW, C*filter_h*filter_w).

    ``filter_h`` and ``filter_w`` are ints (the book's signature); stride, pad and dilation take an
    int or an (h, w) pair.
    """
    _check_array("input_data", input_data, 4, "(N, C, H, W)")
    _check_image_size("input_data", input_data.shape)
    kh = positive_int(filter_h, "filter_h")
    kw = positive_int(filter_w, "filter_w")
    s = pair(stride, "stride", minimum=1)
    p = pair(pad, "pad", minimum=0)
    d = pair(dilation, "dilation", minimum=1)
    oh, ow = conv_output_size(tuple(input_data.shape[2:]), (kh, kw), s, p, d)
    out_dtype, dtype = _result_dtype(input_data)
    impl = _select(backend, None, {"input_data": input_data})
    n, c = input_data.shape[:2]
    if input_data.size == 0:
        return impl.xp.zeros((n * oh * ow, c * kh * kw), dtype=out_dtype)
    col = impl.im2col(_prep(impl, input_data, dtype), kh, kw, s, p, d)
    return col if col.dtype == out_dtype else col.astype(out_dtype)


def col2im(
    col: Any,
    input_shape: tuple[int, int, int, int],
    filter_h: int,
    filter_w: int,
    stride: IntOrPair = 1,
    pad: IntOrPair = 0,
    *,
    dilation: IntOrPair = 1,
    backend: str | None = None,
) -> Any:
    """The book's col2im: col (N*OH*OW, C*filter_h*filter_w) -> (N, C, H, W), the adjoint of im2col."""
    _check_array("col", col, 2, "(N*OH*OW, C*kh*kw)")
    shape = shape4(input_shape, "input_shape")
    kh = positive_int(filter_h, "filter_h")
    kw = positive_int(filter_w, "filter_w")
    s = pair(stride, "stride", minimum=1)
    p = pair(pad, "pad", minimum=0)
    d = pair(dilation, "dilation", minimum=1)
    oh, ow = conv_output_size(shape[2:], (kh, kw), s, p, d)
    expected = (shape[0] * oh * ow, shape[1] * kh * kw)
    if tuple(col.shape) != expected:
        raise ValueError(f"col must have shape {expected} for input_shape {shape}, got {tuple(col.shape)}")
    out_dtype, dtype = _result_dtype(col)
    impl = _select(backend, None, {"col": col})
    if col.size == 0:
        return impl.xp.zeros(shape, dtype=out_dtype)
    dx = impl.col2im(_prep(impl, col, dtype), shape, kh, kw, s, p, d)
    return dx if dx.dtype == out_dtype else dx.astype(out_dtype)


def to_device(x: Any, backend: str | None = None) -> Any:
    """Copy a NumPy array to the selected backend's memory (a no-op for CPU backends)."""
    impl = _registry.select(backend, None, None)
    return x if impl.owns(x) else impl.to_device(np.asarray(x))


def to_host(x: Any) -> np.ndarray:
    """Copy any backend's array back to a NumPy array (a no-op for NumPy arrays)."""
    return _arrays.to_host(x)
