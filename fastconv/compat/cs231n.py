"""Stanford CS231n (assignment 2) ``cs231n/fast_layers.py``, on fastconv.

In ``cs231n/layer_utils.py`` replace the one line ``from .fast_layers import *`` with::

    from fastconv.compat.cs231n import *

and change nothing else: ``__all__`` is exactly the four functions layer_utils takes from
fast_layers, with their signatures, returns and semantics:

* ``conv_forward_fast(x, w, b, conv_param) -> (out, cache)`` and ``conv_backward_fast(dout, cache)
  -> (dx, dw, db)``: x (N, C, H, W), w (F, C, HH, WW), b (F,), ``conv_param = {'stride': int,
  'pad': int}``; ``pad`` zeros on all four sides, cross-correlation plus bias, out (N, F, H', W')
  with ``H' = 1 + (H + 2*pad - HH) // stride`` (floor: sizes that do not tile are accepted, as by
  the assignment's naive layer).
* ``max_pool_forward_fast(x, pool_param) -> (out, cache)`` and ``max_pool_backward_fast(dout, cache)
  -> dx``: ``pool_param = {'pool_height': int, 'pool_width': int, 'stride': int}``, no padding,
  ``H' = 1 + (H - pool_height) // stride``. Every pool shape and stride works: square or not,
  overlapping (stride < pool), gapped (stride > pool), tiling or not. (The assignment's fast pool
  handles only square tiling pools itself and otherwise falls back to im2col_cython, a Cython
  extension that must be compiled first.)

The convolutions and pools run on the fastconv backend selected when the forward is called
(``FASTCONV_BACKEND``, :func:`fastconv.use_backend`, :func:`fastconv.set_backend`, else numba when
installed, else numpy); the backward runs on the backend of its forward. NumPy arrays in give NumPy
arrays out on every backend (with ``FASTCONV_BACKEND=cupy`` they travel to the GPU and back); CuPy
arrays in give CuPy arrays out.

Dtypes, as the assignment's strided convolution gives them:

* conv out: ``np.result_type(x, w, b)`` (its ``w.dot(x_cols) + b``; the convolution itself runs in
  ``np.result_type(x, w)`` and the bias is added after it when b's dtype is wider);
* conv dx: ``np.result_type(w, dout)``, dw: ``np.result_type(dout, x)``, db: dout's dtype;
* max pool out and dx: x's dtype (its dx starts as ``np.zeros_like`` of x's columns).

Integer and bool arrays are computed in float64 where NumPy's rule would give an integer dtype (an
integer convolution would overflow silently, and fastconv's kernels are floating-point only); a mix
that NumPy already promotes to a float keeps that float (e.g. int8 with float32: float32). float16
is stored as float16 and computed in float32. Complex and other dtypes raise TypeError.

Max pool ties: the backward gives a window's whole gradient to its first maximum in row-major
order, summed over overlapping windows, as the assignment's im2col path and the usual
``np.argmax``-based naive solutions do. The assignment's ``'reshape'`` path (pool_height ==
pool_width == stride, tiling) instead splits a tie equally among the equal maxima, so on ties the
two differ per element, not in sum. Ties occur e.g. among the zeros a ReLU leaves; the
``relu_backward`` before the pool zeroes the gradient at those positions either way.

Nothing passed in is modified. The cache is this module's own (a tuple, see ``_ConvCache`` and
``_PoolCache``; the conv cache starts with ``x, w, b, conv_param`` like the assignment's) and holds a
copy of the parameter dict, so changing the dict after the forward does not change the backward.
It holds x and w themselves, not copies (as the assignment's naive layers do): arrays changed in
place between a forward and its backward give the backward the changed values.
Bad arguments raise TypeError or ValueError naming the argument, what it got and what it needs.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

import fastconv

__all__ = ["conv_forward_fast", "conv_backward_fast", "max_pool_forward_fast", "max_pool_backward_fast"]

_FLOAT64 = np.dtype(np.float64)


class _ConvCache(NamedTuple):
    """What conv_backward_fast needs: the inputs as given, then fastconv's copies of them."""

    x: Any
    w: Any
    b: Any
    conv_param: dict  # a copy: the student's dict may change after the forward
    stride: int
    pad: int
    backend: str  # the backward runs where its forward ran (the cache holds that backend's arrays)
    on_host: bool  # NumPy arrays came in: NumPy arrays go out
    x_run: Any  # x and w in the convolution's dtype, on the backend's device
    w_run: Any
    out_shape: tuple[int, int, int, int]


class _PoolCache(NamedTuple):
    """What max_pool_backward_fast needs: x's shape and dtype, the window and argmax."""

    x_shape: tuple[int, int, int, int]
    dtype: np.dtype  # of dx: x's (float64 for an integer x)
    pool_param: dict  # a copy, as for _ConvCache
    pool_height: int
    pool_width: int
    stride: int
    argmax: Any  # (N, C, H', W') int32: window-local index i*pool_width + j of each first maximum
    backend: str
    on_host: bool


def _check_array(name: str, a: Any, ndim: int, what: str) -> None:
    """TypeError unless ``a`` is a NumPy or CuPy array of a real dtype; ValueError unless ``ndim``-D."""
    if not (hasattr(a, "shape") and isinstance(getattr(a, "dtype", None), np.dtype)):
        raise TypeError(
            f"{name} must be a NumPy array {what}, got {type(a).__module__}.{type(a).__name__}"
            + (" (convert it with numpy.asarray)" if isinstance(a, (list, tuple)) else "")
        )
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a floating (or integer) dtype, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(a.shape)} ({a.ndim}-D)")


def _float_dtype(*arrays: Any) -> np.dtype:
    """NumPy's result dtype of ``arrays``, float64 where that is an integer or bool dtype."""
    dt = np.result_type(*[a.dtype for a in arrays])
    return dt if dt.kind == "f" else _FLOAT64


def _param(params: Any, dict_name: str, key: str, minimum: int, keys: str) -> int:
    """``params[key]`` as an int >= ``minimum``, or an error naming the key and the dict."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{dict_name} must be a dict with the keys {keys}, got {type(params).__name__}")
    if key not in params:
        raise ValueError(
            f"{dict_name} has no key {key!r}: it needs the keys {keys}, got keys {sorted(map(repr, params))}"
        )
    value = params[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{dict_name}[{key!r}] must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        need = "at least 1" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{dict_name}[{key!r}] must be {need}, got {value!r}")
    return int(value)


def _cast(a: Any, dtype: np.dtype) -> Any:
    """``a`` in ``dtype``: ``a`` itself when it has it already, else a new array (``a`` is never changed)."""
    return a if a.dtype == dtype else a.astype(dtype)


def _to_run(a: Any, backend: str) -> Any:
    """``a`` in ``backend``'s memory: NumPy arrays move there (no copy on CPU backends), CuPy arrays stay."""
    return fastconv.to_device(a, backend=backend) if isinstance(a, np.ndarray) else a


def _back(a: Any, dtype: np.dtype, on_host: bool) -> Any:
    """A result in the dtype the assignment gives it, as a NumPy array when NumPy arrays came in."""
    a = _cast(a, dtype)
    return fastconv.to_host(a) if on_host else a


def _check_dout(dout: Any, expected: tuple[int, ...], what: str) -> None:
    _check_array("dout", dout, 4, f"of {what}'s output shape {expected}")
    if tuple(dout.shape) != tuple(expected):
        raise ValueError(
            f"dout must have the shape of {what}'s output, {tuple(expected)}, got {tuple(dout.shape)}"
        )


def conv_forward_fast(x: Any, w: Any, b: Any, conv_param: dict) -> tuple[Any, _ConvCache]:
    """Convolution: x (N, C, H, W), w (F, C, HH, WW), b (F,) -> (out (N, F, H', W'), cache).

    ``out[n, f, i, j] = b[f] + sum_{c,p,q} xpad[n, c, i*stride + p, j*stride + q] * w[f, c, p, q]``,
    xpad being x with ``conv_param['pad']`` zeros on all four sides;
    ``H' = 1 + (H + 2*pad - HH) // stride`` (likewise W').
    """
    _check_array("x", x, 4, "(N, C, H, W)")
    _check_array("w", w, 4, "(F, C, HH, WW)")
    _check_array("b", b, 1, "(F,)")
    keys = "'stride' and 'pad'"
    stride = _param(conv_param, "conv_param", "stride", 1, keys)
    pad = _param(conv_param, "conv_param", "pad", 0, keys)
    n, c, h, wd = x.shape
    f, cw, hh, ww = w.shape
    if cw != c:
        raise ValueError(
            f"channel mismatch: x {tuple(x.shape)} has C = {c} channels but w {tuple(w.shape)} has {cw}; "
            "w must be (F, C, HH, WW)"
        )
    if f < 1 or hh < 1 or ww < 1:
        raise ValueError(f"w must have at least one filter of at least 1x1, got shape {tuple(w.shape)}")
    if tuple(b.shape) != (f,):
        raise ValueError(
            f"b must have shape ({f},), one bias per filter of w {tuple(w.shape)}; got {b.shape}"
        )
    if h + 2 * pad < hh or wd + 2 * pad < ww:
        raise ValueError(
            f"the filter {hh}x{ww} of w {tuple(w.shape)} is larger than x {tuple(x.shape)} padded by "
            f"conv_param['pad'] = {pad} ({h + 2 * pad}x{wd + 2 * pad}): no output position"
        )
    conv_dtype = _float_dtype(x, w)
    out_dtype = _float_dtype(x, w, b)
    backend = fastconv.get_backend(x)
    on_host = isinstance(x, np.ndarray)
    x_run = _to_run(_cast(x, conv_dtype), backend)
    w_run = _to_run(_cast(w, conv_dtype), backend)
    if out_dtype == conv_dtype:  # the usual case: the bias is added inside the convolution
        b_run = _to_run(_cast(b, conv_dtype), backend)
        out = fastconv.conv2d(x_run, w_run, b_run, stride, pad, backend=backend)
    else:  # b is wider than x and w: the assignment adds it after its dot, in the wider dtype
        out = fastconv.conv2d(x_run, w_run, None, stride, pad, backend=backend).astype(out_dtype)
        out += _to_run(_cast(b, out_dtype), backend).reshape(1, -1, 1, 1)
    cache = _ConvCache(
        x, w, b, dict(conv_param), stride, pad, backend, on_host, x_run, w_run, tuple(out.shape)
    )
    return _back(out, out_dtype, on_host), cache


def conv_backward_fast(dout: Any, cache: _ConvCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv_forward_fast`: dout (N, F, H', W') -> (dx (N, C, H, W), dw (F, C, HH, WW),
    db (F,)), with ``db[f] = sum_{n,i,j} dout[n, f, i, j]``."""
    if not isinstance(cache, _ConvCache):
        raise TypeError(
            "cache must be the cache conv_forward_fast of fastconv.compat.cs231n returned, got "
            f"{type(cache).__name__} (a cache of cs231n's own fast or naive layers does not fit)"
        )
    _check_dout(dout, cache.out_shape, "conv_forward_fast")
    run_dtype = _float_dtype(dout)
    d_run = _to_run(_cast(dout, run_dtype), cache.backend)
    dx, dw, db = fastconv.conv2d_backward(
        d_run, cache.x_run, cache.w_run, cache.stride, cache.pad, backend=cache.backend
    )
    return (
        _back(dx, _float_dtype(cache.w, dout), cache.on_host),
        _back(dw, _float_dtype(dout, cache.x), cache.on_host),
        _back(db, run_dtype, cache.on_host),
    )


def max_pool_forward_fast(x: Any, pool_param: dict) -> tuple[Any, _PoolCache]:
    """Max pooling without padding: x (N, C, H, W) -> (out (N, C, H', W'), cache).

    ``out[n, c, i, j] = max_{p < pool_height, q < pool_width} x[n, c, i*stride + p, j*stride + q]``,
    ``H' = 1 + (H - pool_height) // stride``, ``W' = 1 + (W - pool_width) // stride``.
    """
    _check_array("x", x, 4, "(N, C, H, W)")
    keys = "'pool_height', 'pool_width' and 'stride'"
    ph = _param(pool_param, "pool_param", "pool_height", 1, keys)
    pw = _param(pool_param, "pool_param", "pool_width", 1, keys)
    stride = _param(pool_param, "pool_param", "stride", 1, keys)
    h, w = x.shape[2:]
    if ph > h or pw > w:
        raise ValueError(
            f"the pool {ph}x{pw} (pool_param['pool_height'] x pool_param['pool_width']) is larger than "
            f"x {tuple(x.shape)}'s {h}x{w} images: no output position"
        )
    dtype = _float_dtype(x)
    backend = fastconv.get_backend(x)
    on_host = isinstance(x, np.ndarray)
    out, argmax = fastconv.max_pool2d(_to_run(_cast(x, dtype), backend), (ph, pw), stride, backend=backend)
    cache = _PoolCache(tuple(x.shape), dtype, dict(pool_param), ph, pw, stride, argmax, backend, on_host)
    return _back(out, dtype, on_host), cache


def max_pool_backward_fast(dout: Any, cache: _PoolCache) -> Any:
    """Gradient of :func:`max_pool_forward_fast`: dout (N, C, H', W') -> dx (N, C, H, W).

    Each window's dout goes whole to the window's first maximum in row-major order (the argmax of
    the forward); overlapping windows add up. See the module docstring on ties.
    """
    if not isinstance(cache, _PoolCache):
        raise TypeError(
            "cache must be the cache max_pool_forward_fast of fastconv.compat.cs231n returned, got "
            f"{type(cache).__name__} (a cache of cs231n's own fast or naive layers does not fit)"
        )
    _check_dout(dout, tuple(cache.argmax.shape), "max_pool_forward_fast")
    d_run = _to_run(_cast(dout, _float_dtype(dout)), cache.backend)
    dx = fastconv.max_pool2d_backward(
        d_run,
        cache.argmax,
        cache.x_shape,
        (cache.pool_height, cache.pool_width),
        cache.stride,
        backend=cache.backend,
    )
    return _back(dx, cache.dtype, cache.on_host)
