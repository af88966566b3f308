"""The NumPy backend's convolution algorithms: which shapes each can run, and which "auto" picks.

The NumPy backend is the reference: "auto" runs "gemm" everywhere (whole-array im2col + one GEMM,
the layout the classic NumPy layers use). The other algorithms are there to be chosen by name, as
array-code twins of the numba backend's.
"""

from __future__ import annotations

from fastconv._shapes import Pair
from fastconv.backends.numpy.winograd import TILE
from fastconv.backends.numpy.winograd import supports as winograd_support

NAMES = ("gemm", "winograd", "winograd2", "direct")


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
    if name in TILE:
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
    """Always "gemm" (see the module docstring)."""
    return "gemm"
