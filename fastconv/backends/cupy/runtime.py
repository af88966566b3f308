"""Loading and launching the CUDA kernels of the cupy backend; the input check shared by its ops.

The kernels are the ``.cu`` sources beside this file, described by :mod:`fastconv.backends.cupy.kernels`
and compiled with NVRTC through ``cupy.RawModule`` once per process and device (CuPy's on-disk cache
makes later processes start fast). Every launch goes to CuPy's current stream.

``cupy`` is None where CuPy cannot be imported: the module still loads (the package's ``probe`` says
why the backend is unusable, and the kernel table stays usable for the CI checks that compile the
sources with NVRTC and g++ on machines without a GPU).

:mod:`~fastconv.backends.cupy.ops` and :mod:`~fastconv.backends.cupy.pooling` reach CuPy, the
launcher and the input check only as attributes of this module (``runtime.cupy``,
``runtime.launch``, ``runtime.require``), never by importing the names: the CPU tests swap these
three for NumPy and the g++ build of the same kernels, and so run the ops' whole composition
(GEMMs, group chunks, layouts) without a GPU.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from fastconv._arrays import is_cupy
from fastconv.backends.cupy import kernels as _cu

try:
    import cupy
except Exception:  # not installed, or a broken install: probe() reports which  # noqa: BLE001
    cupy = None

BLOCK = 256
MAX_BLOCKS = 65535 * 4  # the grid-stride loop covers the rest; enough blocks to fill any current GPU


@cache
def _module(file: str, device: int) -> Any:
    """cupy.RawModule of one .cu file with all its instantiations, compiled once per device."""
    return cupy.RawModule(
        code=_cu.source(file), options=_cu.NVRTC_OPTIONS, name_expressions=_cu.name_expressions(file)
    )


@cache
def _function(kernel: str, dtype: str, index: str, device: int) -> Any:
    k = _cu.KERNELS[kernel]
    return _module(k.file, device).get_function(k.expression(dtype, index))


def launch(kernel: str, dtype: np.dtype, launch: _cu.Launch, arrays: tuple[Any, ...]) -> None:
    """Launch ``kernel`` on the current stream over ``launch.total`` elements (asynchronous).

    ``arrays`` are the kernel's pointer arguments in order; the scalars come from ``launch``.
    """
    if launch.total == 0:
        return
    scalar = np.int32 if launch.index == "int32" else np.int64
    k = _cu.KERNELS[kernel]
    params = k.params[len(arrays) :]
    scalars = tuple(
        np.int32(v) if p == "int" else scalar(v) for p, v in zip(params, launch.scalars, strict=True)
    )
    fn = _function(kernel, np.dtype(dtype).name, launch.index, cupy.cuda.runtime.getDevice())
    blocks = min(-(-launch.total // BLOCK), MAX_BLOCKS)
    fn((blocks,), (BLOCK,), (*arrays, *scalars))


def require(arr: Any, arg: str, dtypes: tuple[str, ...] = tuple(_cu.ELEMENT_TYPES)) -> Any:
    """``arr`` as a C-contiguous cupy.ndarray (no copy when it already is one); TypeError otherwise."""
    if not is_cupy(arr):
        raise TypeError(
            f"{arg} is a {type(arr).__module__}.{type(arr).__name__}, but the cupy backend needs a "
            f"cupy.ndarray: move it with fastconv.to_device({arg}, backend='cupy'), or use the 'auto' backend"
        )
    if arr.dtype.name not in dtypes:
        raise TypeError(f"{arg} must have dtype {' or '.join(dtypes)}, got {arr.dtype}")
    return arr if arr.flags.c_contiguous else cupy.ascontiguousarray(arr)


def warmup() -> None:
    """Compile every kernel instantiation on the current device ahead of time."""
    device = cupy.cuda.runtime.getDevice()
    for kernel in _cu.KERNELS:
        for dtype in _cu.ELEMENT_TYPES:
            for index in _cu.INDEX_TYPES:
                _function(kernel, dtype, index, device)
