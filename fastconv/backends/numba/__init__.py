"""The numba backend: CPU kernels compiled by numba, run on fastconv's thread pool, GEMMs through NumPy's BLAS.

Importing this package imports numba (the registry imports it on first use of the backend, never
at ``import fastconv``); the kernels compile, or load from the per-user cache, on the first call
that needs them, and :func:`warmup` compiles all of them ahead of time.

* ``ops.py``: the contract's convolution kernels (how each runs is described there);
* ``pooling.py``: max and average pooling;
* ``kernels.py``: the compiled loops ops.py calls (im2col, col2im, grouped/depthwise, NHWC);
* ``algorithms.py``: which convolution algorithm runs a shape (gemm, winograd, direct);
* ``winograd.py``, ``direct.py``: those algorithms' kernels;
* ``runtime.py``: cache directory, the thread pool, the compile notice.

See :mod:`fastconv.backends` for the contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastconv._config import blas_description, settings
from fastconv.backends._host_arrays import owns, to_device, to_host
from fastconv.backends.numba import runtime
from fastconv.backends.numba.algorithms import NAMES as algorithms
from fastconv.backends.numba.algorithms import algorithm_support, choose_algorithm
from fastconv.backends.numba.ops import (
    col2im,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_forward,
    im2col,
)
from fastconv.backends.numba.pooling import (
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
    "warmup",
    "xp",
]

name = "numba"
xp = np
contract = 2


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


# What warmup compiles, in units (about 1 s per kernel and dtype on one core): gemm (im2col), col2im,
# pool (pooling.py's max pooling, NCHW), pool_nhwc (the same in NHWC), avgpool (average and global
# average pooling, both layouts), winograd (its two kernels), direct (its kernel), depthwise (NCHW's
# flat-plane forward and backward), grouped (the grouped and strided depthwise kernels of both
# layouts: forward, dx, dW), nhwc
# (the NHWC im2col and col2im, which NCHW layers of many channels run too).
UNITS = (
    "gemm",
    "col2im",
    "pool",
    "winograd",
    "direct",
    "depthwise",
    "grouped",
    "nhwc",
    "pool_nhwc",
    "avgpool",
)


def _compile(units: tuple[str, ...] | list[str], dtypes: tuple[str, ...] = ("float32", "float64")) -> None:
    """Run the kernels of ``units`` (see :data:`UNITS`) on tiny inputs of each dtype."""
    announce, runtime.announce = runtime.announce, False  # compiling on purpose: the caller says so
    try:
        _run_units(units, dtypes)
    finally:
        runtime.announce = announce


def _run_units(units: tuple[str, ...] | list[str], dtypes: tuple[str, ...]) -> None:
    one, two, pad1, pad0 = (1, 1), (2, 2), (1, 1, 1, 1), (0, 0, 0, 0)
    for unit in units:
        for dtype in dtypes:
            if unit in ("pool", "pool_nhwc", "avgpool"):
                from fastconv.backends.numba import pooling

                if unit == "avgpool":
                    pooling.warmup_kernels(dtype, maximum=False)
                else:
                    pooling.warmup_kernels(dtype, ("NCHW",) if unit == "pool" else ("NHWC",), average=False)
                continue
            rng = np.random.default_rng(0)
            x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
            W = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
            if unit == "col2im":  # the gemm backward's dx, without the gemm unit's im2col
                col2im(np.ones((2 * 2 * 2, 2 * 2 * 2), dtype), x.shape, 2, 2, two, pad0, one)
                continue
            xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            Wd = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
            if unit == "depthwise":  # multiplier 1, stride 1, NCHW: the flat-plane kernels
                y = conv2d_forward(x, Wd[:2], None, one, pad1, one, 2, "NCHW", algorithm="direct")
                conv2d_backward(y, x, Wd[:2], one, pad1, one, 2, "NCHW", True, algorithm="direct")
                continue
            if unit == "grouped":  # a depthwise multiplier of 2 takes the grouped kernels of each layout
                for layout, xl in (("NCHW", x), ("NHWC", xh)):
                    y = conv2d_forward(xl, Wd, None, one, pad1, one, 2, layout, algorithm="direct")
                    conv2d_backward(y, xl, Wd, one, pad1, one, 2, layout, True, algorithm="direct")
                continue
            if unit == "nhwc":  # the NHWC GEMM's im2col and col2im (also NCHW layers of many channels)
                y = conv2d_forward(xh, W, None, one, pad1, one, 1, "NHWC")
                conv2d_backward(y, xh, W, one, pad1, one, 1, "NHWC", True)
                continue
            y = conv2d_forward(x, W, None, one, pad1, one, algorithm=unit)
            if unit != "direct":  # direct's backward runs the gemm and col2im units' kernels
                conv2d_backward(y, x, W, one, pad1, one, 1, "NCHW", unit != "gemm", algorithm=unit)


# Compile cost of each unit per dtype, in seconds on one core of the 2-core test machine (measured
# with an empty cache, one process per unit, float32): used to share the units between processes.
_UNIT_COST = {
    "gemm": 1.5,
    "col2im": 1.3,
    "pool": 3.0,
    "pool_nhwc": 1.7,
    "avgpool": 5.0,
    "winograd": 1.8,
    "direct": 2.9,
    "depthwise": 8.1,
    "grouped": 10.4,
    "nhwc": 1.8,
}
_CHILD_START_S = 1.3


def cache_is_cold() -> bool:
    """True when the kernel cache holds no compiled kernels of this fastconv and numba version."""
    return not any(Path(runtime.CACHE_DIR).rglob("kernels.*.nbi"))


def compile_ahead(
    dtypes: tuple[str, ...] = ("float32", "float64"),
    units: tuple[str, ...] = UNITS,
    processes: int | None = None,
) -> Callable[[], None]:
    """Compile ``units`` for ``dtypes`` into the kernel cache on ``processes`` cores (default: up to
    2) when the cache is cold: the other processes' shares start now, in child processes (numba
    compiles in one thread and holds the GIL); the returned function compiles this process's share
    and waits for the children. Nothing happens with a warm cache or with ``NUMBA_DISABLE_JIT``.

    ``fastconv train`` calls it before loading its data, so the children compile while the data load.
    """
    import numba

    if numba.config.DISABLE_JIT or not cache_is_cold():
        return lambda: None
    jobs = sorted(((u, dt) for u in units for dt in dtypes), key=lambda j: -_UNIT_COST.get(j[0], 2.0))
    shares: list[list[tuple[str, str]]] = [
        [] for _ in range(max(1, processes or min(os.cpu_count() or 1, 2)))
    ]
    # a child first pays Python's and numba's start-up; this process (share 0) pays numba's anyway
    load = [0.0] + [_CHILD_START_S] * (len(shares) - 1)
    for job in jobs:  # longest first, each to the least loaded process
        i = min(range(len(shares)), key=load.__getitem__)
        shares[i].append(job)
        load[i] += _UNIT_COST.get(job[0], 2.0)
    here, others = shares[0], [share for share in shares[1:] if share]
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = "from fastconv.backends import numba as nb\nfor u, dt in {!r}: nb._compile([u], (dt,))"
    children = [subprocess.Popen([sys.executable, "-c", code.format(share)], env=env) for share in others]

    def finish() -> None:
        try:
            for unit, dtype in here:
                _compile([unit], (dtype,))
        finally:
            for child, share in zip(children, others):
                if child.wait() != 0:
                    # Nothing is lost (the kernels compile on first use here instead), but say so: a
                    # child that cannot compile usually means a cache directory it cannot write.
                    units = ", ".join(sorted({u for u, _ in share}))
                    print(
                        f"fastconv: a process compiling the numba kernels ({units}) exited with status "
                        f"{child.returncode}; they compile on first use instead",
                        file=sys.stderr,
                    )

    return finish


def warmup(parallel: bool = True, dtypes: tuple[str, ...] = ("float32", "float64")) -> float:
    """Compile (or load from the cache) every kernel for ``dtypes``; returns the seconds taken.

    With a cold cache and ``parallel``, child processes compile the kernels (one per core, see
    :func:`compile_ahead`) and this process then loads them from the cache.
    """
    runtime.announce = False  # compiling on purpose: `fastconv warmup` says so
    start = time.perf_counter()
    if parallel:
        compile_ahead(dtypes)()
    _compile(UNITS, dtypes)
    return time.perf_counter() - start
