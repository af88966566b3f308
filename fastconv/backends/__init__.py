"""The backend contract.

A backend is any object (usually a module) with these attributes. The functional API
(:mod:`fastconv.functional`) validates every argument once, so a backend receives only
clean input:

* arrays are C-contiguous, non-empty, of the backend's array type, and of one compute dtype,
  ``float32`` or ``float64`` (float16 is computed in float32 by the caller; empty batches and
  channel counts of zero are answered by the caller without a kernel call);
* ``stride`` and ``dilation`` are ``(h, w)`` tuples of Python ints (>= 1); ``pad`` is a
  ``(top, bottom, left, right)`` tuple of Python ints >= 0 (the caller turns "same", "valid",
  pairs and ((top, bottom), (left, right)) into it); the dilated window fits the padded input;
* ``groups`` is an int >= 1 dividing C and F; ``layout`` is "NCHW" or "NHWC": x, y, dout and dx are
  in that order, W is always (F, C // groups, kh, kw), and an ``x_shape`` is in the layout's order;
* convolution output sizes come from :func:`fastconv._shapes.conv_output_size`; a pool's output
  size is an argument (``out_hw``; ceil mode makes it larger than the floor formula).

A backend never modifies its inputs and always returns fresh arrays (never views of a
buffer it reuses). Semantics are cross-correlation, as in the classic layers and PyTorch.

Kernels (contract version 2; shapes use N batch, C channels, F filters, kh/kw kernel, OH/OW output,
Cg = C // groups, Fg = F // groups, g = f // Fg; written in NCHW order, NHWC holds the same values)::

    im2col(x, kh, kw, stride, pad, dilation) -> col
        x: (N, C, H, W) -> col: (N*OH*OW, C*kh*kw)       (the book's layout)
        col[(n*OH + oh)*OW + ow, (c*kh + i)*kw + j] = x[n, c, oh*sh + i*dh - top, ow*sw + j*dw - left]
        (zero outside x)
    col2im(col, x_shape, kh, kw, stride, pad, dilation) -> dx
        the adjoint of im2col: dx[n, c, h, w] = sum of the col entries that read x[n, c, h, w]
    conv2d_forward(x, W, b, stride, pad, dilation, groups, layout) -> y
        x: (N, C, H, W), W: (F, Cg, kh, kw), b: (F,) or None -> y: (N, F, OH, OW)
        y[n, f, oh, ow] = b[f] + sum_{c<Cg,i,j} W[f, c, i, j] * x[n, g*Cg + c, oh*sh + i*dh - top, ow*sw + j*dw - left]
    conv2d_backward(dout, x, W, stride, pad, dilation, groups, layout, need_dx=True) -> (dx, dW, db)
        dout: (N, F, OH, OW) -> dx: (N, C, H, W) or None when not need_dx, dW: (F, Cg, kh, kw), db: (F,)
    conv2d_backward_data(dout, W, x_shape, stride, pad, dilation, groups, layout) -> dx
        conv2d_backward's dx without x (the forward pass of a transposed convolution)
    maxpool2d_forward(x, kh, kw, stride, pad, dilation, out_hw, layout) -> (y, argmax)
        y: (N, C, OH, OW), window (oh, ow) reads rows oh*sh + i*dh - top (columns likewise);
        positions outside x are skipped (every window holds at least one element of x); argmax:
        int32 of y's shape holding the window-local index i*kw + j of the FIRST maximum among the
        window's elements of x in row-major order (NaN counts as the maximum, as in numpy.argmax),
        so it never names padding, even in a window of -inf
    maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad, dilation, layout) -> dx
        dx: (N, C, H, W); each window's gradient goes to the input element its argmax names.
        argmax (int32) comes from user code and is the one input the caller cannot check
        cheaply: a value outside [0, kh*kw) raises ValueError (fastconv._shapes.bad_argmax_error),
        and never writes outside dx
    avgpool2d_forward(x, kh, kw, stride, pad, out_hw, count_include_pad, layout) -> y
        y[n, c, oh, ow] = sum of x over the window clipped to x / divisor, PyTorch's divisor:
        hstart = oh*sh - top, hend = min(hstart + kh, H + bottom), pool_h = hend - hstart, then
        clipped to [0, H) (columns likewise); divisor = pool_h*pool_w if count_include_pad, else the
        clipped window's area (the part of a ceil-mode window past the padding never counts)
    avgpool2d_backward(dout, x_shape, kh, kw, stride, pad, count_include_pad, layout) -> dx
        dx[n, c, h, w] = sum over the windows holding (h, w) of dout / that window's divisor

Global average pooling is avgpool2d with a window of the whole image. The last three kernels are
new in version 2: a backend that lacks one can still be registered, and a call that needs it fails
saying which kernel is missing. A backend that does not set ``contract = 2`` is driven with the
version-1 calls (symmetric ``pad`` pairs, no ``groups``/``layout``/``out_hw`` arguments) and
refuses, with a clear error, what those cannot express.

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
    contract: int                    2 for this text (1, or absent: the version-1 calls)

Optional:

    probe() -> str | None            None when usable, else why not (cheap; called once, cached)
    algorithms: tuple[str, ...]      convolution algorithms it implements (fastconv._algorithms names
                                     them; "gemm" first); conv2d_forward and conv2d_backward then
                                     take ``algorithm=<name>`` as a keyword, default "gemm". A backend
                                     without it runs "gemm" only and never sees the keyword.
    algorithm_support(name, direction, x_shape, W_shape, stride, pad, dilation, groups, layout) -> str | None
                                     None when ``name`` can compute that convolution, else why not
    choose_algorithm(direction, x_shape, W_shape, stride, pad, dilation, dtype, groups, layout) -> str
                                     what "auto" runs (measured rules; shapes only, cheap)
    info() -> dict[str, str]         versions, threads, devices for ``fastconv info``
    warmup() -> None                 compile every kernel ahead of time (JIT backends)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol, runtime_checkable

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]


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

    @property
    def contract(self) -> int: ...

    def im2col(self, x: Any, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair) -> Any: ...

    def col2im(
        self,
        col: Any,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pad4,
        dilation: Pair,
    ) -> Any: ...

    def conv2d_forward(
        self, x: Any, W: Any, b: Any | None, stride: Pair, pad: Pad4, dilation: Pair, groups: int, layout: str
    ) -> Any: ...

    def conv2d_backward(
        self,
        dout: Any,
        x: Any,
        W: Any,
        stride: Pair,
        pad: Pad4,
        dilation: Pair,
        groups: int,
        layout: str,
        need_dx: bool = True,
    ) -> tuple[Any | None, Any, Any]: ...

    def conv2d_backward_data(
        self,
        dout: Any,
        W: Any,
        x_shape: tuple[int, int, int, int],
        stride: Pair,
        pad: Pad4,
        dilation: Pair,
        groups: int,
        layout: str,
    ) -> Any: ...

    def maxpool2d_forward(
        self, x: Any, kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair, out_hw: Pair, layout: str
    ) -> tuple[Any, Any]: ...

    def maxpool2d_backward(
        self,
        dout: Any,
        argmax: Any,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pad4,
        dilation: Pair,
        layout: str,
    ) -> Any: ...

    def avgpool2d_forward(
        self,
        x: Any,
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pad4,
        out_hw: Pair,
        count_include_pad: bool,
        layout: str,
    ) -> Any: ...

    def avgpool2d_backward(
        self,
        dout: Any,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pad4,
        count_include_pad: bool,
        layout: str,
    ) -> Any: ...


CONTRACT = 2
"""The contract version this module describes."""

KERNELS = (
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
)
"""The kernels every backend has (version 1 had exactly these)."""

NEW_KERNELS = ("conv2d_backward_data", "avgpool2d_forward", "avgpool2d_backward")
"""Kernels added in version 2: optional at registration, named in the error of a call that needs one."""

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
