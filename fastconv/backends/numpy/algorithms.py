"""The NumPy backend's convolution algorithms: which shapes each can run, and which "auto" picks.

The NumPy backend is the reference: "auto" runs "gemm" everywhere (whole-array im2col + one batched
GEMM over the groups, the layout the classic NumPy layers use). The other algorithms are there to be
chosen by name, as array-code twins of the numba backend's, which shares :func:`algorithm_support`.
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
    pad: tuple[int, int, int, int],
    dilation: Pair,
    groups: int,
    layout: str,
) -> str | None:
    """None when ``name`` can compute this convolution, else why not ("gemm" and "direct" run every shape).

    "winograd"/"winograd2" need a 3x3 kernel, stride 1, dilation 1, groups 1, "NCHW" and a symmetric
    pad (top == bottom, left == right).
    """
    if name not in TILE:
        return None
    top, bottom, left, right = pad
    if groups != 1:
        return f"{name} runs groups=1 only, got groups={groups}; use algorithm='gemm' or 'direct'"
    if layout != "NCHW":
        return f"{name} runs the NCHW layout only, got {layout!r}; use algorithm='gemm' or 'direct'"
    if top != bottom or left != right:
        return (
            f"{name} needs a symmetric pad (top == bottom, left == right), got (top, bottom, left, right) "
            f"{tuple(pad)}; use algorithm='gemm' or 'direct'"
        )
    return winograd_support(W_shape, stride, dilation)


def choose_algorithm(
    direction: str,
    x_shape: tuple[int, ...],
    W_shape: tuple[int, ...],
    stride: Pair,
    pad: tuple[int, int, int, int],
    dilation: Pair,
    dtype: str,
    groups: int,
    layout: str,
) -> str:
    """Always "gemm" (see the module docstring)."""
    return "gemm"
