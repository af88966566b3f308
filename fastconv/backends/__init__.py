"""The backend contract.

A backend is any object (usually a module) with these attributes. The functional API
(:mod:`fastconv.functional`) validates every argument once, so a backend receives only
clean input:

* arrays are C-contiguous, non-empty, of the backend's array type, and of one compute dtype,
  ``float32`` or ``float64`` (float16 is computed in float32 by the caller; empty batches and
  channel counts of zero are answered by the caller without a kernel call);
* ``stride``, ``pad`` and ``dilation`` are ``(h, w)`` tuples of Python ints
  (stride >= 1, pad >= 0, dilation >= 1) and the dilated window fits the padded input;
* output sizes come from :func:`fastconv._shapes.conv_output_size` (floor mode).

A backend never modifies its inputs and always returns fresh arrays (never views of a
buffer it reuses). Semantics are cross-correlation, as in the classic layers and PyTorch.

Kernels (shapes use N batch, C channels, F filters, kh/kw kernel, OH/OW output)::

    im2col(x, kh, kw, stride, pad, dilation) -> col
        x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw)       (the book's layout)
        col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    col2im(col, x_shape, kh, kw, stride, pad, dilation) -> dx
        the adjoint of im2col: dx[n, c, h, w] = sum of the col entries that read x[n, c, h, w]
    conv2d_forward(x, W, b, stride, pad, dilation) -> y
        x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW)
        y[n, f, oh, ow] = b[f] + sum_{c,i,j} W[f, c, i, j] * xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]
    conv2d_backward(dout, x, W, stride, pad, dilation, need_dx=True) -> (dx, dW, db)
        dout: (N, F, OH, OW) -> dx: (N, C, H, W) or None when not need_dx, dW: (F, C, kh, kw), db: (F,)
    maxpool2d_forward(x, kh, kw, stride, pad, dilation) -> (y, argmax)
        y: (N, C, OH, OW); padding is -inf; argmax: (N, C, OH, OW) int32 holding the window-local
        index i*kw + j of the FIRST maximum in row-major window order (NaN counts as the maximum,
        as in numpy.argmax)
    maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad, dilation) -> dx
        dx: (N, C, H, W); each window's gradient goes to the input element its argmax names.
        argmax (int32) comes from user code and is the one input the caller cannot check
        cheaply: a value outside [0, kh*kw) raises ValueError (fastconv._shapes.bad_argmax_error),
        and never writes outside dx

Each backend is a package ``fastconv/backends/<name>/`` with the same layout: ``__init__.py`` (the
attributes below), ``ops.py`` (the six kernels), ``kernels.py`` (compiled kernels, where there are
any) and private helpers beside them. :class:`Backend` states the contract as a ``typing.Protocol``;
:func:`fastconv.testing.check_backend` checks a backend against the float64 reference.

Plus:

    name: str                        the registry name
    xp: module                       the array module (numpy, cupy, ...)
    owns(array) -> bool              True when ``array`` is this backend's array type
    to_device(host_array) -> array   copy a NumPy array to this backend's memory
    to_host(array) -> numpy.ndarray  copy back to a NumPy array

Optional:

    probe() -> str | None            None when usable, else why not (cheap; called once, cached)
    algorithms: tuple[str, ...]      convolution algorithms it implements (fastconv._algorithms names
                                     them; "gemm" first); conv2d_forward and conv2d_backward then
                                     take ``algorithm=<name>`` as a keyword, default "gemm". A backend
                                     without it runs "gemm" only and never sees the keyword.
    algorithm_support(name, direction, x_shape, W_shape, stride, pad, dilation) -> str | None
                                     None when ``name`` can compute that convolution, else why not
    choose_algorithm(direction, x_shape, W_shape, stride, pad, dilation, dtype) -> str
                                     what "auto" runs (measured rules; shapes only, cheap)
    info() -> dict[str, str]         versions, threads, devices for ``fastconv info``
    warmup() -> None                 compile every kernel ahead of time (JIT backends)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol, runtime_checkable

Pair = tuple[int, int]


@runtime_checkable
class Backend(Protocol):
    """The backend contract, for type checkers (``mypy`` checks the three built-ins against it)."""

    @property
    def name(self) -> str: ...

    @property
    def xp(self) -> ModuleType | None: ...

    def owns(self, array: object) -> bool: ...

    def to_device(self, array: Any) -> Any: ...

    def to_host(self, array: Any) -> Any: ...

    def im2col(self, x: Any, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> Any: ...

    def col2im(
        self,
        col: Any,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pair,
        dilation: Pair,
    ) -> Any: ...

    def conv2d_forward(
        self, x: Any, W: Any, b: Any | None, stride: Pair, pad: Pair, dilation: Pair
    ) -> Any: ...

    def conv2d_backward(
        self, dout: Any, x: Any, W: Any, stride: Pair, pad: Pair, dilation: Pair, need_dx: bool = True
    ) -> tuple[Any | None, Any, Any]: ...

    def maxpool2d_forward(
        self, x: Any, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
    ) -> tuple[Any, Any]: ...

    def maxpool2d_backward(
        self,
        dout: Any,
        argmax: Any,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pair,
        dilation: Pair,
    ) -> Any: ...


KERNELS = (
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
)
REQUIRED = ("name", "xp", "owns", "to_device", "to_host", *KERNELS)


def missing_attributes(backend: object) -> list[str]:
    """The attributes of the contract (:data:`REQUIRED`) that ``backend`` lacks, in contract order."""
    return [attr for attr in REQUIRED if not hasattr(backend, attr)]


# Built-in backends, as lazy import strings (nothing is imported until a backend is used),
# with the install hint given when one is unavailable.
BUILTIN = {
    "numpy": ("fastconv.backends.numpy", "numpy is a dependency of fastconv"),
    "numba": ("fastconv.backends.numba", "pip install 'fastconv[numba]'"),
    "cupy": (
        "fastconv.backends.cupy",
        "pip install 'fastconv[cuda12]' on a machine with an NVIDIA GPU and driver",
    ),
}
