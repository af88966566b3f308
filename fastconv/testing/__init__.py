"""Tools to test code that uses fastconv, and fastconv backends themselves (like ``cupy.testing``).

* :func:`gradcheck`: analytic gradients of a network, layer or function against central differences;
* :func:`check_backend`: a backend, built-in or your own, against the contract of :mod:`fastconv.backends`;
* :mod:`fastconv.testing.reference`: float64 direct-loop references of every kernel and of
  conv_transpose2d and global average pooling (no fastconv code; checked against torch.nn.functional).

Testing your own backend
------------------------
Call :func:`check_backend` from your test suite; it raises an AssertionError when anything fails::

    import fastconv.testing
    import my_backend

    def test_my_backend():
        fastconv.testing.check_backend(my_backend)

``check_backend(backend, *, dtypes=("float32", "float64"), seed=0, cases=None, kernels=None,
tolerances=None, layouts=("NCHW", "NHWC")) -> BackendReport`` takes a backend object (usually a
module) or a registered name. It checks contract version 2 of :mod:`fastconv.backends`: the nine
:data:`KERNELS` (``conv2d_backward_data``, ``avgpool2d_forward`` and ``avgpool2d_backward`` are new
in version 2) on every :class:`Case` of :data:`CASES` (non-square inputs and kernels, different
stride/pad/dilation per axis, asymmetric pads (top, bottom, left, right), groups of 2, depthwise and
depthwise-multiplier convolutions, ceil-mode pools, border windows that read only padding, window =
input, a batch of 1, many channels, ...) in both layouts (im2col and col2im are NCHW only), with
fresh random data from ``seed``, moving arrays with the backend's ``to_device``/``to_host``, and
checks:

* that the backend declares ``contract = 2`` and has every selected kernel; a missing one fails
  before anything runs, e.g. "backend 'mine' lacks avgpool2d_forward (contract v2)";
* values against :mod:`fastconv.testing.reference`: max|got - want| <= tol * max(1, max|want|) with
  tol from :data:`TOLERANCES` (float32 1e-5, float64 1e-12; override with ``tolerances=``); im2col and
  the max-pool forward must be exact; col2im must be the adjoint of the backend's im2col;
  conv2d_backward_data must give conv2d_backward's dx;
* a backend that declares convolution ``algorithms`` has conv2d_forward and conv2d_backward checked
  once per algorithm (``algorithm=name``) on every case and layout its ``algorithm_support`` accepts,
  against :data:`ALGORITHM_TOLERANCES` where an algorithm's stated error is larger (Winograd F(4x4,3x3));
* shapes and dtypes of every result (argmax int32), NHWC results in NHWC order;
  ``conv2d_backward(..., need_dx=False)`` gives dx None;
* pooling with the case's ``out_hw`` (PyTorch's floor or ceil rule, :func:`reference.pool_out_size`),
  on cases where every window holds an input element (the contract's callers guarantee it): max
  pooling's argmax is the window-local index of the first maximum in row-major window order, ties
  included, padding skipped (never named, even in a window of -inf) and NaN the maximum, the same index
  in both layouts; an argmax
  outside [0, kh*kw) (-1 and kh*kw) raises ValueError; average pooling uses PyTorch's divisor with
  ``count_include_pad`` True and False (the part of a ceil-mode window past the padding never counts);
* every call: inputs unchanged, results fresh arrays of the backend (no view of an input, no buffer
  shared between calls), and two calls with the same inputs give identical bits.

On failure :class:`BackendCheckError` (an AssertionError) lists every failed check with its kernel,
case (shapes, stride, pad, dilation), dtype and largest error; its ``failures`` are :class:`Failure`
objects. On success it returns a :class:`BackendReport` (number of checks, max error per kernel and
dtype; ``print(report)`` for a table). For one pytest item per case::

    @pytest.mark.parametrize("case", fastconv.testing.CASES, ids=lambda c: c.name)
    def test_my_backend_case(case):
        fastconv.testing.check_backend(my_backend, cases=[case])

Your own cases are ``Case(name, x_shape, filters, kernel, stride, pad, dilation, groups, ceil_mode)``:
x_shape in NCHW order (NHWC data is its transpose), ``pad`` an (h, w) pair or (top, bottom, left,
right), ``groups`` dividing C and ``filters`` (W is (filters, C // groups, kh, kw)).
"""

from __future__ import annotations

from fastconv.testing._backend_check import (
    ALGORITHM_TOLERANCES,
    CASES,
    KERNELS,
    LAYOUTS,
    TOLERANCES,
    BackendCheckError,
    BackendReport,
    Case,
    Failure,
    check_backend,
)
from fastconv.testing._gradcheck import GradcheckError, GradcheckResult, gradcheck, numerical_gradient

__all__ = [
    "CASES",
    "ALGORITHM_TOLERANCES",
    "KERNELS",
    "LAYOUTS",
    "TOLERANCES",
    "BackendCheckError",
    "BackendReport",
    "Case",
    "Failure",
    "GradcheckError",
    "GradcheckResult",
    "check_backend",
    "gradcheck",
    "numerical_gradient",
]
