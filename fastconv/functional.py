"""The functional API: argument checks once, then dispatch to the selected backend.

Output sizes (floor mode, cross-correlation, as in the classic layers and PyTorch)::

    OH = (H + top + bottom - dilation_h*(kh - 1) - 1) // stride_h + 1      (OW likewise)

``pad`` takes an int, an (h, w) pair, ``((top, bottom), (left, right))``, ``"valid"`` or ``"same"``
(see :func:`fastconv._shapes.pad4`); ``layout`` is "NCHW" or "NHWC" (channels last: x, y and the
gradients are (N, H, W, C); W keeps its (F, C // groups, kh, kw) layout); ``groups`` splits the
channels into that many independent convolutions (``groups == C``: depthwise).

Dtypes: float32 and float64 are computed as they are; float16 is a storage type (computed in
float32, returned as float16); x and W of different float dtypes are promoted as NumPy
promotes them. Integer, bool and complex arrays are refused.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import numpy as np

from fastconv import _algorithms, _arrays, _registry
from fastconv._shapes import (
    IntOrPair,
    Pad4,
    PadSpec,
    Pair,
    as_pad4,
    bad_argmax_error,
    conv_output_size,
    effective_kernel,
    from_nchw,
    layout_name,
    pad4,
    pair,
    pool_output_size,
    positive_int,
    shape4,
    to_nchw,
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


def _check_image_size(name: str, shape: tuple[int, ...]) -> None:
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name} must have a height and width of at least 1, got shape {tuple(shape)}")


def _layout(layout: Any) -> str:
    return layout_name(layout)


def _channels_axis(layout: str) -> int:
    return 3 if layout == "NHWC" else 1


def _v2(impl: Any) -> bool:
    """Whether the backend takes the version-2 kernel calls (see fastconv.backends)."""
    return getattr(impl, "contract", 1) >= 2


def _kernel(impl: Any, kernel: str, op: str) -> Any:
    """A backend's kernel, or an error naming the missing kernel when the backend lacks it."""
    fn = getattr(impl, kernel, None)
    if fn is None or not _v2(impl):
        raise NotImplementedError(
            f"backend {impl.name!r} has no {kernel} kernel (new in version 2 of the fastconv.backends "
            f"contract), which {op} needs; use the numpy, numba or cupy backend"
        )
    return fn


def _v1_pad(impl: Any, op: str, pad: Pad4, groups: int = 1, layout: str = "NCHW") -> Pair:
    """The symmetric (h, w) pad a version-1 backend takes, refusing what its calls cannot express."""
    top, bottom, left, right = pad
    if groups != 1 or layout != "NCHW" or top != bottom or left != right:
        raise NotImplementedError(
            f"backend {impl.name!r} implements version 1 of the fastconv.backends contract, whose {op} "
            f"takes groups=1, layout='NCHW' and a symmetric pad only (got groups={groups}, "
            f"layout={layout!r}, pad (top, bottom, left, right) = {pad}); use the numpy, numba or cupy backend"
        )
    return (top, left)


def _groups(groups: Any, c: int, f: int, what: str) -> int:
    g = positive_int(groups, "groups")
    if c % g or f % g:
        raise ValueError(
            f"groups={g} must divide both the input channels ({c}) and the output channels ({f}) of {what}"
        )
    return g


def _conv_args(
    x: Any,
    W: Any,
    stride: IntOrPair,
    pad: PadSpec,
    dilation: IntOrPair,
    groups: Any,
    layout: Any,
) -> tuple[Pair, Pad4, Pair, int, str, Pair]:
    """Checked (stride, pad, dilation, groups, layout, (OH, OW)) of a convolution of x with W."""
    lay = _layout(layout)
    order = "(N, H, W, C)" if lay == "NHWC" else "(N, C, H, W)"
    _check_array("x", x, 4, order)
    _check_array("W", W, 4, "(F, C // groups, kh, kw)")
    if W.shape[0] < 1 or W.shape[2] < 1 or W.shape[3] < 1:
        raise ValueError(
            f"W must have at least one filter and a kernel of at least 1x1, got shape {tuple(W.shape)}"
        )
    n, c, h, w = to_nchw(tuple(x.shape), lay)
    g = _groups(groups, c, W.shape[0], f"x {tuple(x.shape)} ({lay}) and W {tuple(W.shape)}")
    if W.shape[1] * g != c:
        raise ValueError(
            f"channel mismatch: x has {c} channels (shape {tuple(x.shape)}, layout {lay!r}, channels on axis "
            f"{_channels_axis(lay)}) but W {tuple(W.shape)} with groups={g} expects {W.shape[1] * g}; "
            f"W must be (F, C // groups, kh, kw)"
        )
    _check_image_size("x", (n, c, h, w))
    s = pair(stride, "stride", minimum=1)
    d = pair(dilation, "dilation", minimum=1)
    p = pad4(pad, "pad", kernel=(W.shape[2], W.shape[3]), dilation=d, stride=s)
    out_hw = conv_output_size((h, w), tuple(W.shape[2:]), s, p, d)
    return s, p, d, g, lay, out_hw


def _add_bias(y: Any, bias: Any, layout: str) -> Any:
    y += bias.reshape((1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1))
    return y


def _empty_conv(impl: Any, shape: tuple[int, ...], bias: Any, layout: str, dtype: np.dtype) -> Any:
    """The output of a convolution with nothing to sum: the bias everywhere (zero without one)."""
    y = impl.xp.zeros(shape, dtype=dtype)
    return y if bias is None else _add_bias(y, bias, layout)


def _forward(
    impl: Any, algorithm: str | None, xc: Any, Wc: Any, bias: Any, s: Pair, p: Pad4, d: Pair, g: int, lay: str
) -> Any:
    """The backend's conv2d_forward on prepared arrays, with the algorithm resolved."""
    if not _v2(impl):
        pp = _v1_pad(impl, "conv2d_forward", p, g, lay)

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_forward, name, xc, Wc, bias, s, pp, d)

    else:

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_forward, name, xc, Wc, bias, s, p, d, g, lay)

    conv = _algorithms.Conv("forward", tuple(xc.shape), tuple(Wc.shape), s, p, d, g, lay)
    return run(_algorithms.resolve(impl, algorithm, conv, xc.dtype, run))


def _backward(
    impl: Any,
    algorithm: str | None,
    dc: Any,
    xc: Any,
    Wc: Any,
    s: Pair,
    p: Pad4,
    d: Pair,
    g: int,
    lay: str,
    need_dx: bool,
) -> tuple[Any, Any, Any]:
    """The backend's conv2d_backward on prepared arrays, with the algorithm resolved."""
    if not _v2(impl):
        pp = _v1_pad(impl, "conv2d_backward", p, g, lay)

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_backward, name, dc, xc, Wc, s, pp, d, need_dx=need_dx)

    else:

        def run(name: str) -> Any:
            return _call(impl, impl.conv2d_backward, name, dc, xc, Wc, s, p, d, g, lay, need_dx=need_dx)

    conv = _algorithms.Conv("backward", tuple(xc.shape), tuple(Wc.shape), s, p, d, g, lay)
    return run(_algorithms.resolve(impl, algorithm, conv, xc.dtype, run))


def conv2d(
    x: Any,
    W: Any,
    b: Any = None,
    stride: IntOrPair = 1,
    pad: PadSpec = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    algorithm: str | None = None,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """2-D convolution (cross-correlation): x (N, C, H, W), W (F, C // groups, kh, kw), b (F,) -> (N, F, OH, OW).

    ``layout="NHWC"``: x (N, H, W, C) -> (N, OH, OW, F). ``groups``: input and output channels
    split into that many groups, each convolved on its own (``groups == C``: depthwise).
    ``algorithm``: "auto" (the default, through ``fastconv.configure``), "gemm", "winograd",
    "winograd2" or "direct" (see :func:`conv_algorithm`); a named one that cannot run this shape on
    this backend raises ValueError.
    """
    s, p, d, g, lay, out_hw = _conv_args(x, W, stride, pad, dilation, groups, layout)
    out_dtype, dtype = _result_dtype(x, W)
    impl = _select(backend, _layer_backend, {"x": x, "W": W, "b": b if hasattr(b, "shape") else None})
    bias = _bias(impl, b, W.shape[0], dtype)
    if x.size == 0:  # an empty batch, or no channels: every output is the bias
        y = _empty_conv(impl, from_nchw((x.shape[0], W.shape[0], *out_hw), lay), bias, lay, dtype)
    else:
        y = _forward(impl, algorithm, _prep(impl, x, dtype), _prep(impl, W, dtype), bias, s, p, d, g, lay)
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
    pad: PadSpec = 0,
    dilation: IntOrPair = 1,
    dtype: Any = "float32",
    *,
    groups: int = 1,
    layout: str = "NCHW",
    direction: str = "forward",
    algorithm: str | None = None,
    backend: str | None = None,
) -> str:
    """The algorithm a conv2d (``direction="forward"``) or conv2d_backward call with these shapes would
    run on ``backend`` (the selected one by default) under the current settings.

    ``x_shape`` is in ``layout``'s order. With autotuning on, the tuned choice when this shape was
    tuned already, else the rules' choice (the first call tunes it).
    """
    lay = _layout(layout)
    xs, ws = shape4(x_shape, "x_shape"), shape4(W_shape, "W_shape")
    if direction not in _algorithms.DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    n, c, h, w = to_nchw(xs, lay)
    g = _groups(groups, c, ws[0], f"x_shape {xs} and W_shape {ws}")
    s = pair(stride, "stride", minimum=1)
    d = pair(dilation, "dilation", minimum=1)
    p = pad4(pad, "pad", kernel=ws[2:], dilation=d, stride=s)
    conv_output_size((h, w), ws[2:], s, p, d)
    dt = _COMPUTE.get(np.dtype(dtype), np.dtype(dtype))
    impl = _registry.select(backend, None, None)
    conv = _algorithms.Conv(direction, xs, ws, s, p, d, g, lay)
    if algorithm is None and _algorithms.settings.algorithm == "auto" and _algorithms.settings.autotune:
        hit = _algorithms.tuner.cached(impl, conv, dt)
        if hit is not None:
            return hit
    return _algorithms.resolve(impl, algorithm, conv, dt, None)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_dout(dout: Any, expected: tuple[int, ...], layout: str, what: str) -> None:
    _check_array("dout", dout, 4, "(N, F, OH, OW)" if layout == "NCHW" else "(N, OH, OW, F)")
    if tuple(dout.shape) != tuple(expected):
        raise ValueError(
            f"dout must have the shape of {what}'s output, {tuple(expected)} (layout {layout!r}), "
            f"got {tuple(dout.shape)}"
        )


def conv2d_backward(
    dout: Any,
    x: Any,
    W: Any,
    stride: IntOrPair = 1,
    pad: PadSpec = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    need_dx: bool = True,
    algorithm: str | None = None,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv2d`: dout (N, F, OH, OW) -> dx (N, C, H, W) (None if not need_dx),
    dW (F, C // groups, kh, kw), db (F,). ``layout`` as for conv2d (dout and dx in it);
    ``algorithm`` as for :func:`conv2d`."""
    s, p, d, g, lay, out_hw = _conv_args(x, W, stride, pad, dilation, groups, layout)
    _check_dout(dout, from_nchw((x.shape[0], W.shape[0], *out_hw), lay), lay, "conv2d")
    need_dx = _check_bool(need_dx, "need_dx")
    out_dtype, dtype = _result_dtype(dout, x, W)
    impl = _select(backend, _layer_backend, {"dout": dout, "x": x, "W": W})
    if x.size == 0:  # nothing to sum over: zero gradients of the right shapes, db from dout
        xp = impl.xp
        spatial = (1, 2) if lay == "NHWC" else (2, 3)
        grads = (
            xp.zeros(x.shape, dtype=dtype) if need_dx else None,
            xp.zeros(W.shape, dtype=dtype),
            xp.asarray(dout, dtype=dtype).sum(axis=(0, *spatial)),
        )
    else:
        dc, xc, Wc = _prep(impl, dout, dtype), _prep(impl, x, dtype), _prep(impl, W, dtype)
        grads = _backward(impl, algorithm, dc, xc, Wc, s, p, d, g, lay, need_dx)
    return tuple(gr if gr is None or gr.dtype == out_dtype else gr.astype(out_dtype) for gr in grads)


class _Transposed(NamedTuple):
    """A transposed convolution as the adjoint of a conv2d from the output (y) to the input (x).

    ``pad`` is the conv2d's padding, ``(top, bottom - output_padding_h, left, right - output_padding_w)``
    clipped at zero; ``core`` the part of y that conv2d reads, the whole of y unless the
    output padding exceeds the bottom/right padding (then the rows/columns past it get the bias
    only, and the backends never see a negative pad).
    """

    stride: Pair
    pad: Pad4
    dilation: Pair
    groups: int
    layout: str
    y_shape: tuple[int, int, int, int]  # in the layout's order
    core: tuple[int, int, int, int]  # in the layout's order


def _transposed_args(
    x: Any,
    W: Any,
    stride: IntOrPair,
    pad: Any,
    output_padding: IntOrPair,
    dilation: IntOrPair,
    groups: Any,
    layout: Any,
) -> _Transposed:
    lay = _layout(layout)
    _check_array("x", x, 4, "(N, H, W, C)" if lay == "NHWC" else "(N, C, H, W)")
    _check_array("W", W, 4, "(C_in, C_out // groups, kh, kw)")
    n, c, h, w = to_nchw(tuple(x.shape), lay)
    _check_image_size("x", (n, c, h, w))
    if W.shape[1] < 1 or W.shape[2] < 1 or W.shape[3] < 1:
        raise ValueError(
            f"W must have at least one output channel and a kernel of at least 1x1, got shape {tuple(W.shape)}"
        )
    if W.shape[0] != c:
        raise ValueError(
            f"channel mismatch: x has {c} channels (shape {tuple(x.shape)}, layout {lay!r}) but W "
            f"{tuple(W.shape)} expects {W.shape[0]}; a transposed convolution's W is (C_in, C_out // groups, kh, kw)"
        )
    g = positive_int(groups, "groups")
    _groups(g, c, W.shape[1] * g, f"x {tuple(x.shape)} and W {tuple(W.shape)}")
    s = pair(stride, "stride", minimum=1)
    d = pair(dilation, "dilation", minimum=1)
    if isinstance(pad, str) and pad == "same":
        raise ValueError(
            "pad='same' is not defined for a transposed convolution (PyTorch refuses it too); pass the "
            "padding as an int, a pair or ((top, bottom), (left, right))"
        )
    top, bottom, left, right = pad4(pad, "pad")
    op = pair(output_padding, "output_padding", minimum=0)
    for axis, o, ss, dd in zip(("height", "width"), op, s, d):
        if o >= ss and o >= dd:
            raise ValueError(
                f"output_padding {axis} {o} must be smaller than the stride ({ss}) or the dilation ({dd})"
            )
    kh, kw = W.shape[2:]
    out = []
    for axis, size, k, ss, dd, p0, p1, o in zip(
        ("height", "width"), (h, w), (kh, kw), s, d, (top, left), (bottom, right), op
    ):
        o_size = (size - 1) * ss - p0 - p1 + effective_kernel(k, dd) + o
        if o_size < 1:
            raise ValueError(
                f"the transposed convolution's output {axis} would be {o_size} (input {size}, stride {ss}, "
                f"pads {p0} and {p1}, kernel {k}, dilation {dd}, output_padding {o}); it must be at least 1"
            )
        out.append(o_size)
    # rows past max(bottom - output_padding, 0) are read by no x: y there is the bias alone
    extra_h, extra_w = max(op[0] - bottom, 0), max(op[1] - right, 0)
    p = (top, max(bottom - op[0], 0), left, max(right - op[1], 0))
    f = W.shape[1] * g
    y_nchw = (n, f, out[0], out[1])
    core_nchw = (n, f, out[0] - extra_h, out[1] - extra_w)
    return _Transposed(s, p, d, g, lay, from_nchw(y_nchw, lay), from_nchw(core_nchw, lay))


def _core(t: _Transposed) -> tuple[slice, ...]:
    """Index of the core of y (see _Transposed) in the layout's order."""
    n, a, b, c = t.core
    if t.layout == "NHWC":
        return (slice(None), slice(0, a), slice(0, b), slice(None))
    return (slice(None), slice(None), slice(0, b), slice(0, c))


def _core_is_empty(t: _Transposed) -> bool:
    hw = t.core[1:3] if t.layout == "NHWC" else t.core[2:]
    return min(hw) < 1


def conv_transpose2d(
    x: Any,
    W: Any,
    b: Any = None,
    stride: IntOrPair = 1,
    pad: PadSpec = 0,
    output_padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Transposed convolution (PyTorch's conv_transpose2d): x (N, C_in, H, W), W (C_in, C_out // groups,
    kh, kw), b (C_out,) -> (N, C_out, OH, OW) with

        OH = (H - 1)*stride_h - top - bottom + dilation_h*(kh - 1) + output_padding_h + 1

    the adjoint of :func:`conv2d` with the same W, stride, pad, dilation and groups (plus the bias).
    ``output_padding`` adds rows/columns at the bottom/right; it must be smaller than the stride or
    the dilation. ``layout`` as for :func:`conv2d`.
    """
    t = _transposed_args(x, W, stride, pad, output_padding, dilation, groups, layout)
    out_dtype, dtype = _result_dtype(x, W)
    impl = _select(backend, _layer_backend, {"x": x, "W": W, "b": b if hasattr(b, "shape") else None})
    f = W.shape[1] * t.groups
    bias = _bias(impl, b, f, dtype)
    if x.size == 0 or _core_is_empty(t):
        y = _empty_conv(impl, t.y_shape, bias, t.layout, dtype)
    else:
        kernel = _kernel(impl, "conv2d_backward_data", "conv_transpose2d")
        core = kernel(
            _prep(impl, x, dtype),
            _prep(impl, W, dtype),
            t.core,
            t.stride,
            t.pad,
            t.dilation,
            t.groups,
            t.layout,
        )
        if t.core == t.y_shape:
            y = core
        else:
            y = impl.xp.zeros(t.y_shape, dtype=dtype)
            y[_core(t)] = core
        if bias is not None:
            _add_bias(y, bias, t.layout)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


def conv_transpose2d_backward(
    dout: Any,
    x: Any,
    W: Any,
    stride: IntOrPair = 1,
    pad: PadSpec = 0,
    output_padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    layout: str = "NCHW",
    *,
    need_dx: bool = True,
    algorithm: str | None = None,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv_transpose2d`: dout (N, C_out, OH, OW) -> dx (N, C_in, H, W) (None if not
    need_dx), dW (C_in, C_out // groups, kh, kw), db (C_out,).

    dx is conv2d(dout, W) and dW conv2d's weight gradient with the roles of x and dout swapped, so
    ``algorithm`` (as for :func:`conv2d`) picks how those run.
    """
    t = _transposed_args(x, W, stride, pad, output_padding, dilation, groups, layout)
    _check_dout(dout, t.y_shape, t.layout, "conv_transpose2d")
    need_dx = _check_bool(need_dx, "need_dx")
    out_dtype, dtype = _result_dtype(dout, x, W)
    impl = _select(backend, _layer_backend, {"dout": dout, "x": x, "W": W})
    xp = impl.xp
    spatial = (1, 2) if t.layout == "NHWC" else (2, 3)
    db = xp.asarray(dout, dtype=dtype).sum(axis=(0, *spatial))
    if x.size == 0 or _core_is_empty(t):
        dx = xp.zeros(x.shape, dtype=dtype) if need_dx else None
        dW = xp.zeros(W.shape, dtype=dtype)
    else:
        dcore = _prep(impl, dout if t.core == t.y_shape else dout[_core(t)], dtype)
        xc, Wc = _prep(impl, x, dtype), _prep(impl, W, dtype)
        args = (t.stride, t.pad, t.dilation, t.groups, t.layout)
        dx = _forward(impl, algorithm, dcore, Wc, None, *args) if need_dx else None
        # conv2d(dcore, W) gives x's shape, so dW is that conv's weight gradient with x as its dout
        _, dW, _ = _backward(impl, algorithm, xc, dcore, Wc, *args, False)
    return tuple(gr if gr is None or gr.dtype == out_dtype else gr.astype(out_dtype) for gr in (dx, dW, db))


def _pool_args(
    x_shape: tuple[int, ...],
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    pad: PadSpec,
    dilation: IntOrPair,
    ceil_mode: Any,
    layout: str,
) -> tuple[Pair, Pair, Pad4, Pair, Pair]:
    """Checked (kernel, stride, pad, dilation, (OH, OW)) of a pooling window sweep; x_shape in layout order."""
    k = pair(kernel_size, "kernel_size", minimum=1)
    s = k if stride is None else pair(stride, "stride", minimum=1)
    d = pair(dilation, "dilation", minimum=1)
    ceil = _check_bool(ceil_mode, "ceil_mode")
    hw = to_nchw(tuple(x_shape), layout)[2:]
    p = pad4(pad, "pad", kernel=k, dilation=d, stride=s, in_hw=hw, same="pool")
    for axis, kk, dd, sides in zip(("height", "width"), k, d, (p[:2], p[2:])):
        for pp in sides:
            if 2 * pp > effective_kernel(kk, dd):
                raise ValueError(
                    f"pad {pp} must be at most half the pooling window {axis} {effective_kernel(kk, dd)} "
                    f"(kernel {kk}, dilation {dd}), or some windows would hold only padding"
                )
    out_hw = pool_output_size(hw, k, s, p, d, ceil)
    for axis, size, kk, ss, dd, top, o in zip(("height", "width"), hw, k, s, d, p[::2], out_hw):
        if dd > 1 and (bad := _window_without_input(size, kk, ss, top, dd, o)) is not None:
            raise ValueError(
                f"pooling window {bad} along the {axis} reads only padding (input {axis} {size}, kernel {kk}, "
                f"stride {ss}, pad {top}, dilation {dd}): its dilated taps skip every input row; use less "
                "padding or a smaller dilation"
            )
    return k, s, p, d, out_hw


@functools.lru_cache(maxsize=256)
def _window_without_input(size: int, k: int, stride: int, top: int, dilation: int, count: int) -> int | None:
    """The first window whose dilated taps miss [0, size) on one axis, or None.

    Only dilation can do that: an undilated window within half-kernel padding always reaches x.
    """
    for o in range(count):
        start = o * stride - top  # tap i reads start + i*dilation
        first = max(0, -(start // dilation))  # the first tap at or after row 0
        if first >= k or start + first * dilation >= size:
            return o
    return None


def _pool_x(x: Any, layout: Any) -> str:
    lay = _layout(layout)
    _check_array("x", x, 4, "(N, H, W, C)" if lay == "NHWC" else "(N, C, H, W)")
    _check_image_size("x", to_nchw(tuple(x.shape), lay))
    return lay


def _v1_pool(impl: Any, op: str, p: Pad4, lay: str, out_hw: Pair, floor_hw: Pair) -> Pair:
    """The pad of a version-1 backend's pooling call, refusing ceil-mode sizes it cannot express."""
    if out_hw != floor_hw:
        raise NotImplementedError(
            f"backend {impl.name!r} implements version 1 of the fastconv.backends contract, whose {op} "
            "has no ceil mode; use the numpy, numba or cupy backend"
        )
    return _v1_pad(impl, op, p, 1, lay)


def max_pool2d(
    x: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: PadSpec = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> tuple[Any, Any]:
    """Max pooling: x (N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) int32).

    ``stride`` defaults to ``kernel_size``; padding is skipped (-inf). ``argmax`` holds the
    window-local index i*kw + j of each window's first maximum in row-major order (NaN counts as
    maximum) among the window's elements of x, in either layout. ``ceil_mode`` rounds the output size up as PyTorch does (a last window must
    start inside the input or its top/left padding). ``pad="same"`` is TensorFlow's.
    """
    lay = _pool_x(x, layout)
    (kh, kw), s, p, d, out_hw = _pool_args(x.shape, kernel_size, stride, pad, dilation, ceil_mode, lay)
    out_dtype, dtype = _result_dtype(x)
    impl = _select(backend, _layer_backend, {"x": x})
    n, c = to_nchw(tuple(x.shape), lay)[:2]
    if x.size == 0:
        shape = from_nchw((n, c, *out_hw), lay)
        return impl.xp.empty(shape, dtype=out_dtype), impl.xp.empty(shape, dtype=np.int32)
    xc = _prep(impl, x, dtype)
    if _v2(impl):
        y, argmax = impl.maxpool2d_forward(xc, kh, kw, s, p, d, out_hw, lay)
    else:
        floor_hw = conv_output_size(to_nchw(tuple(x.shape), lay)[2:], (kh, kw), s, p, d)
        y, argmax = impl.maxpool2d_forward(
            xc, kh, kw, s, _v1_pool(impl, "maxpool2d_forward", p, lay, out_hw, floor_hw), d
        )
    return (y if y.dtype == out_dtype else y.astype(out_dtype)), argmax


def max_pool2d_backward(
    dout: Any,
    argmax: Any,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: PadSpec = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Gradient of :func:`max_pool2d`: dout, argmax (N, C, OH, OW) -> dx (N, C, H, W); ``x_shape`` in the
    layout's order.

    Raises ValueError when ``argmax`` holds a value outside [0, kh*kw) (each backend checks it).
    """
    lay = _layout(layout)
    x_shape = shape4(x_shape, "x_shape")
    (kh, kw), s, p, d, out_hw = _pool_args(x_shape, kernel_size, stride, pad, dilation, ceil_mode, lay)
    n, c = to_nchw(x_shape, lay)[:2]
    expected = from_nchw((n, c, *out_hw), lay)
    _check_dout(dout, expected, lay, "max_pool2d")
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
    dc, ac = _prep(impl, dout, dtype), _prep(impl, argmax, np.int32)
    if _v2(impl):
        dx = impl.maxpool2d_backward(dc, ac, x_shape, kh, kw, s, p, d, lay)
    else:
        floor_hw = conv_output_size(x_shape[2:], (kh, kw), s, p, d)
        pp = _v1_pool(impl, "maxpool2d_backward", p, lay, out_hw, floor_hw)
        dx = impl.maxpool2d_backward(dc, ac, x_shape, kh, kw, s, pp, d)
    return dx if dx.dtype == out_dtype else dx.astype(out_dtype)


def avg_pool2d(
    x: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: PadSpec = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Average pooling: x (N, C, H, W) -> (N, C, OH, OW), PyTorch's avg_pool2d.

    ``stride`` defaults to ``kernel_size``. Each window's sum is divided by the window's area
    counting the padding (``count_include_pad=True``) or only the input elements; the part of a
    ceil-mode window past the padding never counts. ``pad="same"`` is TensorFlow's (pair it with
    ``count_include_pad=False`` for TensorFlow's averages).
    """
    lay = _pool_x(x, layout)
    include = _check_bool(count_include_pad, "count_include_pad")
    (kh, kw), s, p, _, out_hw = _pool_args(x.shape, kernel_size, stride, pad, 1, ceil_mode, lay)
    out_dtype, dtype = _result_dtype(x)
    impl = _select(backend, _layer_backend, {"x": x})
    n, c = to_nchw(tuple(x.shape), lay)[:2]
    if x.size == 0:
        return impl.xp.empty(from_nchw((n, c, *out_hw), lay), dtype=out_dtype)
    kernel = _kernel(impl, "avgpool2d_forward", "avg_pool2d")
    y = kernel(_prep(impl, x, dtype), kh, kw, s, p, out_hw, include, lay)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


def avg_pool2d_backward(
    dout: Any,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: PadSpec = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Gradient of :func:`avg_pool2d`: dout (N, C, OH, OW) -> dx (N, C, H, W); ``x_shape`` in the layout's order."""
    lay = _layout(layout)
    x_shape = shape4(x_shape, "x_shape")
    include = _check_bool(count_include_pad, "count_include_pad")
    (kh, kw), s, p, _, out_hw = _pool_args(x_shape, kernel_size, stride, pad, 1, ceil_mode, lay)
    n, c = to_nchw(x_shape, lay)[:2]
    _check_dout(dout, from_nchw((n, c, *out_hw), lay), lay, "avg_pool2d")
    out_dtype, dtype = _result_dtype(dout)
    impl = _select(backend, _layer_backend, {"dout": dout})
    if dout.size == 0:
        return impl.xp.zeros(x_shape, dtype=out_dtype)
    kernel = _kernel(impl, "avgpool2d_backward", "avg_pool2d_backward")
    dx = kernel(_prep(impl, dout, dtype), x_shape, kh, kw, s, p, include, lay)
    return dx if dx.dtype == out_dtype else dx.astype(out_dtype)


def global_avg_pool2d(
    x: Any, layout: str = "NCHW", *, backend: str | None = None, _layer_backend: str | None = None
) -> Any:
    """The mean over each image plane: x (N, C, H, W) -> (N, C, 1, 1) ((N, 1, 1, C) in NHWC)."""
    lay = _pool_x(x, layout)
    h, w = to_nchw(tuple(x.shape), lay)[2:]
    return avg_pool2d(x, (h, w), (h, w), 0, False, True, lay, backend=backend, _layer_backend=_layer_backend)


def global_avg_pool2d_backward(
    dout: Any,
    x_shape: tuple[int, int, int, int],
    layout: str = "NCHW",
    *,
    backend: str | None = None,
    _layer_backend: str | None = None,
) -> Any:
    """Gradient of :func:`global_avg_pool2d`: dout (N, C, 1, 1) -> dx (N, C, H, W), dout / (H*W) everywhere."""
    lay = _layout(layout)
    xs = shape4(x_shape, "x_shape")
    h, w = to_nchw(xs, lay)[2:]
    return avg_pool2d_backward(
        dout, xs, (h, w), (h, w), 0, False, True, lay, backend=backend, _layer_backend=_layer_backend
    )


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
    col = impl.im2col(_prep(impl, input_data, dtype), kh, kw, s, as_pad4(p) if _v2(impl) else p, d)
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
    dx = impl.col2im(_prep(impl, col, dtype), shape, kh, kw, s, as_pad4(p) if _v2(impl) else p, d)
    return dx if dx.dtype == out_dtype else dx.astype(out_dtype)


def to_device(x: Any, backend: str | None = None) -> Any:
    """Copy a NumPy array to the selected backend's memory (a no-op for CPU backends)."""
    impl = _registry.select(backend, None, None)
    return x if impl.owns(x) else impl.to_device(np.asarray(x))


def to_host(x: Any) -> np.ndarray:
    """Copy any backend's array back to a NumPy array (a no-op for NumPy arrays)."""
    return _arrays.to_host(x)
