"""The cupy backend's pooling kernels: max and average pooling, forward and backward, NCHW and NHWC.

Contract v2 (see :mod:`fastconv.backends`): ``pad`` is (top, bottom, left, right); the forward
kernels get the output size ``out_hw`` from the caller (ceil mode makes it one larger than the floor
formula); shapes are in the layout's own order. One CUDA kernel per call, one thread per output
element (forward) or per input element (backward, a gather without atomics), so results are
deterministic run to run. CuPy and the launcher are reached through
:mod:`~fastconv.backends.cupy.runtime`, as in :mod:`~fastconv.backends.cupy.ops`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconv._shapes import Pair, bad_argmax_error
from fastconv.backends.cupy import kernels as _cu
from fastconv.backends.cupy import runtime as _rt
from fastconv.backends.cupy.kernels import Pad4


def _out_hw(dout: Any, layout: str) -> Pair:
    return tuple(dout.shape[1:3]) if layout == "NHWC" else tuple(dout.shape[2:4])  # type: ignore[return-value]


def _check_grad(dout: Any, x_shape: tuple[int, ...], layout: str) -> None:
    """dout must hold the batch and channels of x: the gathers index dout with x's (n, c)."""
    n, c, _, _ = _cu._nchw(tuple(x_shape), layout)
    dn, dc, _, _ = _cu._nchw(tuple(dout.shape), layout)
    if (dn, dc) != (n, c):
        raise ValueError(f"dout {tuple(dout.shape)} does not match x_shape {tuple(x_shape)} ({layout})")


def maxpool2d_forward(
    x: Any, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair, out_hw: Pair, layout: str = "NCHW"
) -> tuple[Any, Any]:
    """x -> y and argmax (int32), both (N, C, OH, OW) in x's layout; argmax is the first maximum's i*kw + j."""
    x = _rt.require(x, "x")
    launch = _cu.maxpool_fwd_args(
        tuple(x.shape), kh, kw, stride, pad, dilation, (out_hw[0], out_hw[1]), layout
    )
    y = _rt.cupy.empty(launch.out_shape, dtype=x.dtype)
    argmax = _rt.cupy.empty(launch.out_shape, dtype=np.int32)
    _rt.launch("fc_maxpool_fwd", x.dtype, launch, (x, y, argmax))
    return y, argmax


def maxpool2d_backward(
    dout: Any,
    argmax: Any,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str = "NCHW",
) -> Any:
    """dout, argmax (y's shape) -> dx of ``x_shape``, a deterministic gather (one thread per input element).

    Raises ValueError when an argmax value lies outside [0, kh*kw).
    """
    dout = _rt.require(dout, "dout")
    argmax = _rt.require(argmax, "argmax", dtypes=("int32",))
    if argmax.shape != dout.shape:
        raise ValueError(f"argmax {tuple(argmax.shape)} and dout {tuple(dout.shape)} must have one shape")
    _check_grad(dout, x_shape, layout)
    # The gather reads each window's argmax from every pixel the window covers; an out-of-range value
    # would match none of them and drop the gradient silently. One reduction (and a sync) refuses it.
    if bool(((argmax < 0) | (argmax >= kh * kw)).any()):
        raise bad_argmax_error(argmax, kh * kw)
    launch = _cu.maxpool_bwd_args(
        tuple(x_shape), kh, kw, stride, pad, dilation, _out_hw(dout, layout), layout
    )
    dx = _rt.cupy.empty(launch.out_shape, dtype=dout.dtype)
    _rt.launch("fc_maxpool_bwd", dout.dtype, launch, (dout, argmax, dx))
    return dx


def avgpool2d_forward(
    x: Any,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    out_hw: Pair,
    count_include_pad: bool,
    layout: str = "NCHW",
) -> Any:
    """x -> y (N, C, OH, OW) in x's layout: window sums over PyTorch's divisor (see pool.cu)."""
    x = _rt.require(x, "x")
    launch = _cu.avgpool_fwd_args(
        tuple(x.shape), kh, kw, stride, pad, (out_hw[0], out_hw[1]), count_include_pad, layout
    )
    y = _rt.cupy.empty(launch.out_shape, dtype=x.dtype)
    _rt.launch("fc_avgpool_fwd", x.dtype, launch, (x, y))
    return y


def avgpool2d_backward(
    dout: Any,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    count_include_pad: bool,
    layout: str = "NCHW",
) -> Any:
    """dout (y's shape) -> dx of ``x_shape``: each element sums dout / divisor of the windows covering it."""
    dout = _rt.require(dout, "dout")
    _check_grad(dout, x_shape, layout)
    launch = _cu.avgpool_bwd_args(
        tuple(x_shape), kh, kw, stride, pad, _out_hw(dout, layout), count_include_pad, layout
    )
    dx = _rt.cupy.empty(launch.out_shape, dtype=dout.dtype)
    _rt.launch("fc_avgpool_bwd", dout.dtype, launch, (dout, dx))
    return dx
