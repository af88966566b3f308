"""Shared fixtures: one test body runs on every available backend."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

import fastconv

BUILTIN_BACKENDS = [
    "numpy",
    "numba",
    pytest.param("cupy", marks=pytest.mark.gpu),
]

# The real MNIST test set, shared read-only beside the repository (never copied into it).
MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def mnist_missing_reason() -> str | None:
    """Why the real MNIST files cannot be used here, or None when they can."""
    missing = [name for name in MNIST_FILES if not (MNIST_DIR / name).is_file()]
    return (
        f"the real MNIST test set is not at {MNIST_DIR} (missing {', '.join(missing)})" if missing else None
    )


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test set beside the repository. A clone without ../shared/ skips the test with the
    reason; CI (``CI`` set) always has the files, so there a missing file is a failure."""
    reason = mnist_missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MNIST tests: {reason}")
        pytest.skip(reason)  # no MNIST files: a clone without ../shared
    return MNIST_DIR


@pytest.fixture(params=BUILTIN_BACKENDS)
def backend(request) -> str:
    """Name of a backend to test; skips when that backend is unavailable here (e.g. cupy without a GPU)."""
    name = request.param
    status = fastconv.list_backends()[name]
    if not status["available"]:
        pytest.skip(f"backend {name} unavailable here: {status['reason']}")
    return name


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Fresh random numbers, seeded from the test's id so a failure reproduces."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


class On:
    """Moves host arrays to a backend's memory and back, so one test body serves every backend."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *arrays):
        moved = tuple(fastconv.to_device(a, backend=self.name) for a in arrays)
        return moved[0] if len(moved) == 1 else moved

    @staticmethod
    def host(a):
        return None if a is None else fastconv.to_host(a)


@pytest.fixture
def on(backend) -> On:
    return On(backend)


@pytest.fixture(autouse=True)
def _clean_selection(monkeypatch):
    """Each test starts with no process default and no FASTCONV_BACKEND."""
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    fastconv.set_backend(None)
    yield
    fastconv.set_backend(None)
