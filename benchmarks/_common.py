"""Helpers shared by the asv benchmark classes (not benchmarks themselves)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Every built-in backend is a parameter; the ones not usable here are skipped in setup, so the
# parameter grid (and so the result keys) is the same on every machine.
BACKENDS = ["numpy", "numba", "cupy"]
DTYPES = ["float32", "float64"]


def require_backend(name: str) -> None:
    """Skip the benchmark (asv: NotImplementedError in setup) when ``name`` is unavailable here."""
    import fastconv

    status = fastconv.list_backends().get(name)
    if status is None or not status["available"]:
        reason = status["reason"] if status else "not registered"
        raise NotImplementedError(f"backend {name!r} unavailable: {reason}")


def to_device(arrays: dict[str, np.ndarray], backend: str) -> dict[str, Any]:
    """The arrays moved to ``backend``'s memory."""
    import fastconv

    return {k: fastconv.to_device(v, backend=backend) for k, v in arrays.items()}


def sync(backend: str) -> None:
    """Wait for the device (cupy) to finish, so a timed call includes its kernels; no-op on CPU."""
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
