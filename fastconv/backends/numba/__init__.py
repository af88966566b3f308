"""The numba backend: CPU kernels compiled by numba, run on fastconv's thread pool, GEMMs through NumPy's BLAS.

Importing this package imports numba (the registry imports it on first use of the backend, never
at ``import fastconv``); the kernels compile, or load from the per-user cache, on the first call
that needs them, and :func:`warmup` compiles all of them ahead of time.

* ``ops.py``: the contract's six kernels (how each runs is described there);
* ``kernels.py``: the compiled loops they call;
* ``runtime.py``: cache directory, the thread pool, the compile notice.

See :mod:`fastconv.backends` for the contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastconv._config import blas_description, settings
from fastconv.backends._host_arrays import owns, to_device, to_host
from fastconv.backends.numba import runtime
from fastconv.backends.numba.ops import (
    col2im,
    conv2d_backward,
    conv2d_forward,
    im2col,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "im2col",
    "info",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "name",
    "owns",
    "to_device",
    "to_host",
    "warmup",
    "xp",
]

name = "numba"
xp = np


def info() -> dict[str, str]:
    """numba's version, thread count, BLAS threads, cache directory and GEMM threading."""
    import numba

    return {
        "numba": numba.__version__,
        "threads": f"{runtime.num_threads()} (fastconv's thread pool running serial nogil kernels; "
        "fastconv.configure(threads=) or NUMBA_NUM_THREADS)",
        "blas": blas_description(),
        "cache dir": runtime.CACHE_DIR,
        "jit": "disabled (NUMBA_DISABLE_JIT=1)" if numba.config.DISABLE_JIT else "enabled",
        "gemm threads": "split: one single-threaded BLAS call per thread"
        if settings.gemm_threads == "split"
        else "blas: each GEMM one call, threaded by BLAS",
    }


def _compile(group: str) -> None:
    """Run every kernel of ``group`` ("conv", "pool" or "all") on tiny float32 and float64 inputs."""
    runtime.announce = False  # compiling on purpose: the caller says so
    one, zero, two = (1, 1), (0, 0), (2, 2)
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
        if group in ("conv", "all"):
            W = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
            y = conv2d_forward(x, W, None, one, one, one)  # im2col_planes
            conv2d_backward(y, x, W, one, one, one, True)  # col2im_planes
        if group in ("pool", "all"):
            y, am = maxpool2d_forward(x, 2, 2, two, zero, one)
            maxpool2d_backward(y, am, x.shape, 2, 2, two, zero, one)


def warmup(parallel: bool = True) -> float:
    """Compile (or load from the cache) every kernel for float32 and float64; returns the seconds taken.

    With a cold cache and ``parallel``, a child process compiles the pooling kernels while this one
    compiles the convolution kernels (numba compiles in one thread); this process then loads the
    child's work from the cache.
    """
    import numba

    from fastconv.backends.numba import kernels

    runtime.announce = False  # compiling on purpose: `fastconv warmup` says so
    start = time.perf_counter()
    if parallel and not numba.config.DISABLE_JIT and (os.cpu_count() or 1) > 1:
        misses = len(kernels.im2col_planes.stats.cache_misses)
        x = np.ones((1, 1, 2, 2), dtype=np.float32)
        conv2d_forward(x, np.ones((1, 1, 1, 1), np.float32), None, (1, 1), (0, 0), (1, 1))
        if len(kernels.im2col_planes.stats.cache_misses) > misses:  # compiled, not loaded: the cache is cold
            root = str(Path(__file__).resolve().parents[3])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
            code = "from fastconv.backends import numba as nb; nb._compile('pool')"
            child = subprocess.Popen([sys.executable, "-c", code], env=env)
            try:
                _compile("conv")
            finally:
                child.wait()
    _compile("all")
    return time.perf_counter() - start
