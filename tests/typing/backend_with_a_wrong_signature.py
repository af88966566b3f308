"""A backend module whose im2col lacks the dilation argument: mypy must reject it as a Backend."""

from __future__ import annotations

import numpy as np

from fastconv._shapes import Pad4, Pair
from fastconv.backends.numpy import (
    avgpool2d_backward,
    avgpool2d_forward,
    col2im,
    contract,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    owns,
    to_device,
    to_host,
)
from fastconv.backends.numpy import im2col as _im2col

__all__ = [
    "avgpool2d_backward",
    "avgpool2d_forward",
    "col2im",
    "contract",
    "conv2d_backward",
    "conv2d_backward_data",
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


def im2col(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pad4) -> np.ndarray:
    """The contract's im2col without dilation."""
    return _im2col(x, kh, kw, stride, pad, (1, 1))
