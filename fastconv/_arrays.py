"""The one place that tells NumPy arrays from device arrays.

Code that runs on host and device arrays alike asks :func:`array_module` for the module of its
input (``numpy`` or ``cupy``) instead of testing types itself, and copies results back with
:func:`to_host`. Neither function imports CuPy: a CuPy array can only exist once CuPy is imported.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["array_module", "is_cupy", "to_host"]


def is_cupy(a: Any) -> bool:
    """True for a ``cupy.ndarray``."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(a, cupy.ndarray)


def array_module(a: Any) -> ModuleType:
    """The array module of ``a``: ``cupy`` for a CuPy array, else ``numpy``."""
    return sys.modules["cupy"] if is_cupy(a) else np


def to_host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array: a copy for a CuPy array, else ``numpy.asarray(a)`` (no copy for an ndarray).

    Raises TypeError for something that is not array-like.
    """
    if isinstance(a, np.ndarray):
        return a
    if is_cupy(a):
        return a.get()
    if hasattr(a, "__array__") or isinstance(a, (list, tuple, int, float)):
        return np.asarray(a)
    raise TypeError(f"to_host needs an array, got {type(a).__module__}.{type(a).__name__}")
