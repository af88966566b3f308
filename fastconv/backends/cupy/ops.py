"""The CuPy backend's six contract kernels: CUDA kernels for im2col/col2im and max pooling, cuBLAS GEMMs.

The kernels are the ``.cu`` sources beside this file, described by :mod:`fastconv.backends.cupy.kernels`
and compiled with NVRTC through ``cupy.RawModule`` once per process and device (CuPy's on-disk cache
makes later processes start fast). col2im and the max-pool backward are gathers (one thread per input
pixel), so every result is deterministic run to run. Every launch goes to CuPy's current stream.

``cupy`` is None where CuPy cannot be imported: the module still loads (the package's ``probe``
says why the backend is unusable, and the kernel table stays usable for the CI checks that compile
the sources with NVRTC and g++ on machines without a GPU).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from fastconv._arrays import is_cupy
from fastconv._shapes import Pair, bad_argmax_error, conv_output_size
from fastconv.backends.cupy import kernels as _cu

try:
    import cupy
except Exception:  # not installed, or a broken install: probe() reports which  # noqa: BLE001
    cupy = None

_BLOCK = 256
_MAX_BLOCKS = 65535 * 4  # the grid-stride loop covers the rest; enough blocks to fill any current GPU


# ---------------------------------------------------------------------------------------------------
# Kernel loading and launching
# ---------------------------------------------------------------------------------------------------


@cache
def _module(file: str, device: int) -> Any:
    """cupy.RawModule of one .cu file with all its instantiations, compiled once per device."""
    return cupy.RawModule(
        code=_cu.source(file), options=_cu.NVRTC_OPTIONS, name_expressions=_cu.name_expressions(file)
    )


@cache
def _function(kernel: str, dtype: str, index: str, device: int) -> Any:
    k = _cu.KERNELS[kernel]
    return _module(k.file, device).get_function(k.expression(dtype, index))


def _launch(kernel: str, dtype: np.dtype, launch: _cu.Launch, arrays: tuple[Any, ...]) -> None:
    """Launch ``kernel`` on the current stream over ``launch.total`` elements (asynchronous)."""
    if launch.total == 0:
        return
    scalar = np.int32 if launch.index == "int32" else np.int64
    k = _cu.KERNELS[kernel]
    params = k.params[len(arrays) :]
    scalars = tuple(
        np.int32(v) if p == "int" else scalar(v) for p, v in zip(params, launch.scalars, strict=True)
    )
    fn = _function(kernel, np.dtype(dtype).name, launch.index, cupy.cuda.runtime.getDevice())
    blocks = min(-(-launch.total // _BLOCK), _MAX_BLOCKS)
    fn((blocks,), (_BLOCK,), (*arrays, *scalars))


def _require(arr: Any, arg: str, dtypes: tuple[str, ...] = tuple(_cu.ELEMENT_TYPES)) -> Any:
    """``arr`` as a C-contiguous cupy.ndarray (no copy when it already is one); TypeError otherwise."""
    if not is_cupy(arr):
        raise TypeError(
            f"{arg} is a {type(arr).__module__}.{type(arr).__name__}, but the cupy backend needs a "
            f"cupy.ndarray: move it with fastconv.to_device({arg}, backend='cupy'), or use the 'auto' backend"
        )
    if arr.dtype.name not in dtypes:
        raise TypeError(f"{arg} must have dtype {' or '.join(dtypes)}, got {arr.dtype}")
    return arr if arr.flags.c_contiguous else cupy.ascontiguousarray(arr)


def _im2col(x: Any, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair, k_major: bool) -> Any:
    launch = _cu.im2col_args(tuple(x.shape), kh, kw, stride, pad, dilation, k_major)
    col = cupy.empty(launch.out_shape, dtype=x.dtype)
    _launch("fc_im2col", x.dtype, launch, (x, col))
    return col


def _col2im(
    col: Any,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    k_major: bool,
) -> Any:
    launch = _cu.col2im_args(tuple(x_shape), kh, kw, stride, pad, dilation, k_major)
    dx = cupy.empty(launch.out_shape, dtype=col.dtype)
    _launch("fc_col2im", col.dtype, launch, (col, dx))
    return dx


# ---------------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------------


def warmup() -> None:
    """Compile every kernel instantiation on the current device ahead of time."""
    device = cupy.cuda.runtime.getDevice()
    for kernel in _cu.KERNELS:
        for dtype in _cu.ELEMENT_TYPES:
            for index in _cu.INDEX_TYPES:
                _function(kernel, dtype, index, device)


def im2col(x: Any, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> Any:
    """x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw) (the book's layout), one CUDA kernel."""
    x = _require(x, "x")
    return _im2col(x, kh, kw, stride, pad, dilation, k_major=False)


def col2im(
    col: Any, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
) -> Any:
    """col: (N*OH*OW, C*kh*kw) -> dx: (N, C, H, W), a deterministic gather (one thread per pixel)."""
    col = _require(col, "col")
    return _col2im(col, x_shape, kh, kw, stride, pad, dilation, k_major=False)


def conv2d_forward(x: Any, W: Any, b: Any | None, stride: Pair, pad: Pair, dilation: Pair) -> Any:
    """x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW).

    One GEMM on the k-major columns: W (F, C*kh*kw) @ col (C*kh*kw, N*OH*OW) -> (F, N, OH, OW),
    then one fused transpose (+ bias) into the NCHW output.
    """
    x = _require(x, "x")
    W = _require(W, "W")
    n = x.shape[0]
    f, _, kh, kw = W.shape
    oh, ow = conv_output_size(tuple(x.shape[2:]), (kh, kw), stride, pad, dilation)
    col = _im2col(x, kh, kw, stride, pad, dilation, k_major=True)
    y_fn = cupy.matmul(W.reshape(f, -1), col).reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
    y = cupy.empty((n, f, oh, ow), dtype=x.dtype)
    if b is None:
        y[...] = y_fn
    else:
        b = _require(b, "b")
        cupy.add(y_fn, b.reshape(1, f, 1, 1), out=y)
    return y


def conv2d_backward(
    dout: Any, x: Any, W: Any, stride: Pair, pad: Pair, dilation: Pair, need_dx: bool = True
) -> tuple[Any | None, Any, Any]:
    """dout: (N, F, OH, OW) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,).

    dW = dout (F, N*OH*OW) @ col.T and dcol = W.T @ dout, each one GEMM on the k-major columns;
    dx = col2im(dcol), a gather.
    """
    dout, x, W = _require(dout, "dout"), _require(x, "x"), _require(W, "W")
    n, f, oh, ow = dout.shape
    _, _, kh, kw = W.shape
    db = dout.sum(axis=(0, 2, 3))
    dout_f = cupy.ascontiguousarray(dout.reshape(n, f, oh * ow).transpose(1, 0, 2)).reshape(f, n * oh * ow)
    col = _im2col(x, kh, kw, stride, pad, dilation, k_major=True)  # (C*kh*kw, N*OH*OW)
    dW = cupy.matmul(dout_f, col.T).reshape(W.shape)
    dx = None
    if need_dx:
        del col  # free the columns before allocating dcol of the same size
        dcol = cupy.matmul(W.reshape(f, -1).T, dout_f)  # (C*kh*kw, N*OH*OW)
        dx = _col2im(dcol, tuple(x.shape), kh, kw, stride, pad, dilation, k_major=True)
    return dx, dW, db


def maxpool2d_forward(x: Any, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> tuple[Any, Any]:
    """x: (N, C, H, W) -> y: (N, C, OH, OW) and argmax (N, C, OH, OW) int32 (first maximum, NaN wins)."""
    x = _require(x, "x")
    launch = _cu.maxpool_fwd_args(tuple(x.shape), kh, kw, stride, pad, dilation)
    y = cupy.empty(launch.out_shape, dtype=x.dtype)
    argmax = cupy.empty(launch.out_shape, dtype=np.int32)
    _launch("fc_maxpool_fwd", x.dtype, launch, (x, y, argmax))
    return y, argmax


def maxpool2d_backward(
    dout: Any,
    argmax: Any,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> Any:
    """dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W), a deterministic gather (one thread per pixel).

    Raises ValueError when an argmax value lies outside [0, kh*kw).
    """
    dout = _require(dout, "dout")
    argmax = _require(argmax, "argmax", dtypes=("int32",))
    # The gather reads each window's argmax from every pixel the window covers; an out-of-range value
    # would match none of them and drop the gradient silently. One reduction (and a sync) refuses it.
    if bool(((argmax < 0) | (argmax >= kh * kw)).any()):
        raise bad_argmax_error(argmax, kh * kw)
    launch = _cu.maxpool_bwd_args(tuple(x_shape), kh, kw, stride, pad, dilation)
    dx = cupy.empty(launch.out_shape, dtype=dout.dtype)
    _launch("fc_maxpool_bwd", dout.dtype, launch, (dout, argmax, dx))
    return dx
