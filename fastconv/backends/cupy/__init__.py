"""The CuPy backend: CUDA kernels for im2col/col2im, depthwise convolution and pooling, cuBLAS GEMMs.

* ``ops.py``: the convolution kernels of the contract (grouped GEMMs, NCHW and NHWC, direct
  depthwise kernels);
* ``pooling.py``: max and average pooling, forward and backward;
* ``runtime.py``: compiling (NVRTC through cupy.RawModule) and launching the kernels;
* ``kernels.py``: the table of ``.cu`` sources, template instantiations and launch arguments, shared
  with the CI checks that compile the sources without a GPU (``tests/cuda_tools/check.py``);
* ``*.cu``, ``fastconv_common.cuh``: the CUDA sources.

Importing this package imports CuPy when it is installed (the registry imports the package only
when the cupy backend is probed or used, never at ``import fastconv``); ``xp`` is None where CuPy
cannot be imported. The registry calls :func:`probe` to learn whether the backend is usable here,
and why not.
See :mod:`fastconv.backends` for the contract.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconv._arrays import is_cupy
from fastconv.backends.cupy.ops import (
    col2im,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_forward,
    im2col,
)
from fastconv.backends.cupy.pooling import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from fastconv.backends.cupy.runtime import cupy as xp
from fastconv.backends.cupy.runtime import warmup

__all__ = [
    "contract",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_backward_data",
    "conv2d_forward",
    "im2col",
    "info",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "name",
    "owns",
    "probe",
    "to_device",
    "to_host",
    "warmup",
    "xp",
]

name = "cupy"
contract = 2  # the kernels take contract version 2's arguments (see fastconv.backends)
_INSTALL = "pip install 'fastconv[cuda12]' (CUDA 12 driver) on a machine with an NVIDIA GPU"
_ELSEWHERE = "use FASTCONV_BACKEND=numba or numpy on this machine"


def probe() -> str | None:
    """None when CuPy imports and sees a CUDA device; otherwise a one-line reason with the fix."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); {_INSTALL}"
    except Exception as exc:  # noqa: BLE001 - a broken install must become a reason
        return (
            f"CuPy is installed but fails to import ({type(exc).__name__}: {exc}); reinstall it: {_INSTALL}"
        )
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and loader errors alike
        try:
            driver = runtime.driverGetVersion()
        except Exception:  # noqa: BLE001
            driver = 0
        built = cupy.cuda.driver.get_build_version()
        if driver == 0:
            return f"CuPy {cupy.__version__} is installed but no NVIDIA driver was found; {_ELSEWHERE}"
        if "InsufficientDriver" in str(exc) or driver < built:
            return (
                f"NVIDIA driver too old: it supports CUDA {_version(driver)}, CuPy was built for CUDA "
                f"{_version(built)}; update the driver or install the CuPy wheel for your CUDA version"
            )
        if "NoDevice" in str(exc):
            return f"no CUDA device visible ({exc}); check CUDA_VISIBLE_DEVICES, or {_ELSEWHERE}"
        return f"CUDA is not usable ({type(exc).__name__}: {exc}); {_ELSEWHERE}"
    if count == 0:
        return f"no CUDA device visible (check CUDA_VISIBLE_DEVICES); {_ELSEWHERE}"
    if not cupy.is_available():
        return f"cupy.is_available() is False although {count} device(s) are visible; check the CUDA install"
    return None


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def owns(array: object) -> bool:
    """True for a cupy.ndarray. Never imports CuPy (an array of it implies it is imported)."""
    return is_cupy(array)


def to_device(array: np.ndarray) -> Any:
    """Copy a NumPy array to the current CUDA device (cupy.ndarray of the same dtype and shape)."""
    return xp.asarray(array)


def to_host(array: Any) -> np.ndarray:
    """Copy a cupy.ndarray back to a NumPy array (synchronises with the current stream)."""
    return xp.asnumpy(array)


def info() -> dict[str, str]:
    """CuPy, CUDA runtime/driver and NVRTC versions and the visible devices, for ``fastconv info``."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001
        return {"cupy": f"not importable ({type(exc).__name__}: {exc})"}
    out = {"cupy": cupy.__version__}
    runtime = cupy.cuda.runtime
    for key, get in (
        ("cuda_runtime", runtime.runtimeGetVersion),
        ("cuda_driver", runtime.driverGetVersion),
        ("nvrtc", lambda: ".".join(map(str, cupy.cuda.nvrtc.getVersion()))),
    ):
        try:
            value = get()
            if isinstance(value, int):
                value = _version(value) if value else "none"
            out[key] = str(value)
        except Exception as exc:  # noqa: BLE001
            out[key] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        devices = []
        for i in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(i)
            dev_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            mem = props["totalGlobalMem"] / 2**30
            devices.append(f"{i}: {dev_name} (sm_{props['major']}{props['minor']}, {mem:.0f} GiB)")
        out["devices"] = "; ".join(devices) or "none"
    except Exception as exc:  # noqa: BLE001
        out["devices"] = f"none ({type(exc).__name__}: {exc})"
    return out
