"""The numba backend's convolution algorithms: which shapes each can run, and which "auto" picks.

``algorithm_support`` is about correctness (a named algorithm that cannot run a shape is refused by
the caller); ``choose_algorithm`` is about speed: rules measured on a 2-core x86-64 VM (BENCHMARKS.md,
"Convolution algorithms"), cheap to evaluate (shapes only; nothing is compiled or imported).

"direct" means two kernels here: with groups == 1 the direct kernel for few input channels
(:func:`.direct.forward`), with groups > 1 the grouped / depthwise direct kernels
(:func:`.direct.grouped_forward`). "gemm" and "direct" run every shape.
"""

from __future__ import annotations

from fastconv._shapes import Pad4, Pair
from fastconv.backends.numpy.winograd import TILE
from fastconv.backends.numpy.winograd import supports as winograd_support

__all__ = ["NAMES", "algorithm_support", "choose_algorithm", "choose_backward_data"]

NAMES = ("gemm", "winograd", "winograd2", "direct")

# "direct" forward wins while C_in*kh*kw is at most this (S1: 25, S2: 9): the GEMM's K is too thin for BLAS.
DIRECT_MAX_TAPS = 32
# ... and for larger kernels over few input channels with few filters at stride 1, where the GEMM's M (F)
# is thin too: CS231n's 7x7 3->32 on 32x32 1.57x, 5x5 3->32 1.58x, 5x5 6->16 (LeNet's second) 2.6x,
# 3x3 8->32 1.16x faster than "gemm"; with 64 filters, or stride 2 and 4, the two tie (median of 15
# interleaved runs each, 2 threads, float32; benchmarks/compat_cs231n.py is the end-to-end figure).
DIRECT_MAX_C = 8
DIRECT_MAX_F = 32
# Winograd F(4x4,3x3) wins for 3x3 stride-1 layers with at least this many output pixels per image and
# input channels (S4 32x32 and S5 28x28 win by 1.2-1.7x over gemm, both dtypes, forward and backward);
# on S3 (11x11 outputs) the tile waste and the transforms' fixed costs make it 2-3x slower than gemm.
WINOGRAD_MIN_PIXELS = 256
WINOGRAD_MIN_C = 16
# groups > 1: the grouped direct kernels while Cg*kh*kw is at most this, else one GEMM per group (the
# direct kernels do Cg*kh*kw multiply-adds per output from L1; a group's GEMM pays an im2col and a
# slice copy per group, which only many channels per group repay).
GROUP_DIRECT_MAX_TAPS = 144
# conv2d_backward_data of a strided NCHW layer goes through NHWC copies from this many input channels
# (the NHWC col2im's adds run along C: too short below this to repay the two copies).
NHWC_DX_MIN_C = 16


def algorithm_support(
    name: str,
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int = 1,
    layout: str = "NCHW",
) -> str | None:
    """None when ``name`` can compute this convolution, else why not ("gemm" and "direct" run every shape)."""
    if name in TILE:  # NHWC runs through NCHW copies (ops.py)
        if groups != 1:
            return f"{name} needs groups == 1 (got groups={groups})"
        if len(pad) == 4 and (pad[0] != pad[1] or pad[2] != pad[3]):
            return f"{name} needs a symmetric padding (got (top, bottom, left, right) = {tuple(pad)})"
        return winograd_support(W_shape, stride, dilation)
    return None


def choose_algorithm(
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    dtype: str,
    groups: int = 1,
    layout: str = "NCHW",
) -> str:
    """The algorithm "auto" runs (measured rules, see the constants above).

    groups > 1: "direct" while Cg*kh*kw <= GROUP_DIRECT_MAX_TAPS, else "gemm". groups == 1: forward
    "direct" for few taps, or few channels and filters at stride 1 (NCHW only), else "winograd" for big-enough 3x3 stride-1 layers with a
    symmetric padding (in NHWC too: its two NCHW copies cost far less than Winograd saves over the
    GEMM), else "gemm" (in NHWC the native NHWC GEMM); backward "winograd" where the forward would take it, else "gemm"
    (the col2im-free dx of "direct" ties "gemm" at best, see fastconv/backends/numba/direct.py).
    """
    f, cg, kh, kw = W_shape
    if groups > 1:
        return "direct" if cg * kh * kw <= GROUP_DIRECT_MAX_TAPS else "gemm"
    nhwc = layout == "NHWC"
    thin = cg * kh * kw <= DIRECT_MAX_TAPS or (
        cg <= DIRECT_MAX_C and f <= DIRECT_MAX_F and tuple(stride) == (1, 1)
    )
    if direction == "forward" and thin and not nhwc:
        return "direct"
    h, w = (x_shape[1], x_shape[2]) if nhwc else (x_shape[2], x_shape[3])
    top, bottom, left, right = pad
    oh = h + top + bottom - dilation[0] * (kh - 1) - 1
    ow = w + left + right - dilation[1] * (kw - 1) - 1
    big = (oh // stride[0] + 1) * (ow // stride[1] + 1) >= WINOGRAD_MIN_PIXELS and cg >= WINOGRAD_MIN_C
    if big and algorithm_support("winograd", direction, x_shape, W_shape, stride, pad, dilation) is None:
        return "winograd"
    return "gemm"


def choose_backward_data(
    dout_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    x_shape: tuple[int, ...],
    stride: Pair,
    dilation: Pair,
    groups: int,
    layout: str,
) -> str:
    """How conv2d_backward_data runs: "direct" (the grouped direct kernels, groups > 1), "gemm" (col2im
    of W2d.T @ dout, or its NHWC twin in NHWC), or "nhwc" (NCHW, groups == 1: NHWC copies of dout and
    dx around the NHWC GEMM and col2im, whose adds run along C, where the NCHW col2im's adds of a
    strided layer hop by the stride: measured 1.2-1.3x faster on x (32, 64, 14, 14) -> (32, 32, 28,
    28), k 3 and 4, stride 2, one thread)."""
    f, cg, kh, kw = W_shape
    if groups > 1:
        return "direct" if cg * kh * kw <= GROUP_DIRECT_MAX_TAPS else "gemm"
    if layout == "NCHW" and tuple(stride) != (1, 1) and cg >= NHWC_DX_MIN_C:
        return "nhwc"
    return "gemm"
