"""The NumPy backend: vectorised NumPy kernels, GEMMs through NumPy's BLAS.

The reference backend: always available, no compilation. The convolution kernels are in ``ops.py``
(the algorithms beside it: ``winograd.py``, ``direct.py``, chosen by ``algorithms.py``), the pooling
kernels in ``pooling.py``; see :mod:`fastconv.backends` for the contract.
"""

from __future__ import annotations

import numpy as np

from fastconv._config import blas_description
from fastconv.backends._host_arrays import owns, to_device, to_host
from fastconv.backends.numpy.algorithms import NAMES as algorithms
from fastconv.backends.numpy.algorithms import algorithm_support, choose_algorithm
from fastconv.backends.numpy.ops import (
    col2im,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_forward,
    im2col,
)
from fastconv.backends.numpy.pooling import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "algorithm_support",
    "algorithms",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "choose_algorithm",
    "col2im",
    "contract",
    "conv2d_backward",
    "conv2d_backward_data",
    "conv2d_forward",
    "im2col",
    "info",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "name",
    "owns",
    "to_device",
    "to_host",
    "xp",
]

name = "numpy"
xp = np
contract = 2  # the kernels take contract version 2's arguments (see fastconv.backends)


def info() -> dict[str, str]:
    """NumPy's version and its BLAS with its thread count."""
    return {"numpy": np.__version__, "blas": blas_description()}
