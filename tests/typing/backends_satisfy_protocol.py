"""Checked by mypy in tests/test_backend_protocol.py (never run): each built-in backend module is a Backend.

PEP 544: a module satisfies a protocol when its attributes and functions match the protocol's
members. One assignment per line, so that an error names its backend.
"""

import fastconv.backends.cupy as cupy_backend
import fastconv.backends.numba as numba_backend
import fastconv.backends.numpy as numpy_backend
from fastconv.backends import Backend

numpy_is_a_backend: Backend = numpy_backend
numba_is_a_backend: Backend = numba_backend
cupy_is_a_backend: Backend = cupy_backend
