"""fastconv: accelerated 2-D convolution kernels for NumPy neural networks.

Backends (numpy, numba, cupy, or your own) sit behind one registry; see ``fastconv.backends``
for the contract and ``fastconv._registry`` for how a backend is chosen. Importing fastconv
imports NumPy and nothing heavier: numba and cupy load on first use of their backend.
"""

from __future__ import annotations

from typing import Any

from fastconv._config import configure, get_config
from fastconv._registry import (
    BackendUnavailableError,
    get_backend,
    get_backend_object,
    list_backends,
    register_backend,
    set_backend,
    unregister_backend,
    use_backend,
)
from fastconv.functional import (
    avg_pool2d,
    avg_pool2d_backward,
    col2im,
    conv2d,
    conv2d_backward,
    conv_algorithm,
    conv_transpose2d,
    conv_transpose2d_backward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    im2col,
    max_pool2d,
    max_pool2d_backward,
    to_device,
    to_host,
)

__version__ = "0.2.0"

__all__ = [
    "BackendUnavailableError",
    "avg_pool2d",
    "avg_pool2d_backward",
    "col2im",
    "configure",
    "conv2d",
    "conv2d_backward",
    "conv_algorithm",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "get_backend",
    "get_backend_object",
    "get_config",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "gradcheck",
    "im2col",
    "list_backends",
    "max_pool2d",
    "max_pool2d_backward",
    "register_backend",
    "set_backend",
    "to_device",
    "to_host",
    "unregister_backend",
    "use_backend",
]


def __getattr__(name: str) -> Any:
    # Heavier pieces load on first use, so `import fastconv` stays cheap.
    if name == "gradcheck":
        from fastconv.testing import gradcheck

        return gradcheck
    if name in ("layers", "testing"):
        import importlib

        return importlib.import_module(f"fastconv.{name}")
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
