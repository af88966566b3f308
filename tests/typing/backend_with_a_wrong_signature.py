"""A backend module whose im2col lacks the dilation argument: mypy must reject it as a Backend."""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pair
from fastconv.backends.numpy import (
    col2im,
    conv2d_backward,
    conv2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    owns,
    to_device,
    to_host,
)
from fastconv.backends.numpy import im2col as _im2col

__all__ = [
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "im2col",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "name",
    "owns",
    "to_device",
    "to_host",
    "xp",
]

name = "wrong-signature"
xp = np


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair) -> np.ndarray:
    """The contract's im2col without dilation."""
    return _im2col(x, kh, kw, stride, pad, (1, 1))
