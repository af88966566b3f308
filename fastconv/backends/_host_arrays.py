"""Ownership and transfers for the backends whose arrays are NumPy arrays (numpy and numba)."""

from __future__ import annotations

import numpy as np

__all__ = ["owns", "to_device", "to_host"]


def owns(array: object) -> bool:
    """True for a numpy.ndarray."""
    return isinstance(array, np.ndarray)


def to_device(array: np.ndarray) -> np.ndarray:
    """The host is the device: ``array`` itself (as an ndarray)."""
    return np.asarray(array)


def to_host(array: np.ndarray) -> np.ndarray:
    """``array`` itself (as an ndarray)."""
    return np.asarray(array)
