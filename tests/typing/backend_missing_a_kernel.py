"""A backend module without maxpool2d_backward: mypy must reject it as a fastconv.backends.Backend."""

from __future__ import annotations

import numpy as np

from fastconv.backends.numpy import (
    avgpool2d_backward,
    avgpool2d_forward,
    col2im,
    contract,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_forward,
    im2col,
    maxpool2d_forward,
    owns,
    to_device,
    to_host,
)

__all__ = [
    "avgpool2d_backward",
    "avgpool2d_forward",
    "col2im",
    "contract",
    "conv2d_backward",
    "conv2d_backward_data",
    "conv2d_forward",
    "im2col",
    "maxpool2d_forward",
    "name",
    "owns",
    "to_device",
    "to_host",
    "xp",
]

name = "missing-a-kernel"
xp = np
