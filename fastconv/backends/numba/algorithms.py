"""The numba backend's convolution algorithms: which shapes each can run, and which "auto" picks.

``algorithm_support`` is about correctness (a named algorithm that cannot run a shape is refused by
the caller); ``choose_algorithm`` is about speed: rules measured on a 2-core x86-64 VM (BENCHMARKS.md,
"Convolution algorithms"), cheap to evaluate (shapes only; nothing is compiled or imported).
"""

from __future__ import annotations

from fastconv._shapes import Pair

# the same algorithms as the NumPy backend's twins, so the same shapes they can run
from fastconv.backends.numpy.algorithms import NAMES, algorithm_support
from fastconv.backends.numpy.winograd import supports as winograd_support

__all__ = ["NAMES", "algorithm_support", "choose_algorithm"]

# "direct" forward wins while C_in*kh*kw is at most this (S1: 25, S2: 9): the GEMM's K is too thin for BLAS.
DIRECT_MAX_TAPS = 32
# Winograd F(4x4,3x3) wins for 3x3 stride-1 layers with at least this many output pixels per image and
# input channels (S4 32x32 and S5 28x28 win by 1.2-1.7x over gemm, both dtypes, forward and backward);
# on S3 (11x11 outputs) the tile waste and the transforms' fixed costs make it 2-3x slower than gemm.
WINOGRAD_MIN_PIXELS = 256
WINOGRAD_MIN_C = 16


def choose_algorithm(
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    dtype: str,
) -> str:
    """The algorithm "auto" runs (measured rules, see the constants above).

    forward: "direct" for few taps, else "winograd" for big-enough 3x3 stride-1 layers, else "gemm";
    backward: "winograd" where the forward would take it, else "gemm" (the col2im-free dx of "direct"
    ties "gemm" at best, see fastconv/backends/numba/direct.py).
    """
    f, c, kh, kw = W_shape
    if direction == "forward" and c * kh * kw <= DIRECT_MAX_TAPS:
        return "direct"
    oh = x_shape[2] + 2 * pad[0] - dilation[0] * (kh - 1) - 1
    ow = x_shape[3] + 2 * pad[1] - dilation[1] * (kw - 1) - 1
    big = (oh // stride[0] + 1) * (ow // stride[1] + 1) >= WINOGRAD_MIN_PIXELS and c >= WINOGRAD_MIN_C
    if big and winograd_support(W_shape, stride, dilation) is None:
        return "winograd"
    return "gemm"
