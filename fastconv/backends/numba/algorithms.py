"""The numba backend's convolution algorithms: which shapes each can run, and which "auto" picks.

``algorithm_support`` is about correctness (a named algorithm that cannot run a shape is refused by
the caller); ``choose_algorithm`` is about speed: rules measured on a 2-core x86-64 VM (BENCHMARKS.md,
"Convolution algorithms"), cheap to evaluate (shapes only; nothing is compiled or imported).
"""

from __future__ import annotations

from fastconv._shapes import Pair
from fastconv.backends.numpy.winograd import supports as winograd_support

NAMES = ("gemm", "winograd", "winograd2", "direct")

# "direct" forward wins while C_in*kh*kw is at most this (the GEMM's K is too thin for BLAS below it).
DIRECT_MAX_TAPS = 32


def algorithm_support(
    name: str,
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: Pair,
    dilation: Pair,
) -> str | None:
    """None when ``name`` can compute this convolution, else why not ("gemm" and "direct" run every shape)."""
    if name in ("winograd", "winograd2"):
        return winograd_support(W_shape, stride, dilation)
    return None


def choose_algorithm(
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    dtype: str,
) -> str:
    """The algorithm "auto" runs (measured rules, see the module docstring)."""
    f, c, kh, kw = W_shape
    if direction == "forward" and c * kh * kw <= DIRECT_MAX_TAPS:
        return "direct"
    return "gemm"
