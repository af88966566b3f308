"""Check a backend against the contract (v2) of :mod:`fastconv.backends` and the float64 references.

The public names are re-exported by :mod:`fastconv.testing`, whose docstring shows how to use them.
Each kernel has one ``_check_<kernel>`` function below; :func:`check_backend` runs them on every
case, dtype and layout and collects the failures.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv.backends import CONTRACT, NEW_KERNELS
from fastconv.backends import KERNELS as _V1_KERNELS
from fastconv.testing import reference as ref

__all__ = [
    "ALGORITHM_TOLERANCES",
    "CASES",
    "KERNELS",
    "LAYOUTS",
    "TOLERANCES",
    "BackendCheckError",
    "BackendReport",
    "Case",
    "Failure",
    "check_backend",
]

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]
Shape4 = tuple[int, int, int, int]

KERNELS: tuple[str, ...] = (
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_backward_data",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
)
"""The kernels of contract v2, in the order :func:`check_backend` checks them."""
assert set(KERNELS) == {*_V1_KERNELS, *NEW_KERNELS}

_ATTRIBUTES = ("name", "xp", "owns", "to_device", "to_host")

LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")

TOLERANCES: Mapping[str, float] = {"float32": 1e-5, "float64": 1e-12}
"""Per dtype: a result passes when max|got - want| <= tolerance * max(1, max|want|), ``want`` being
the float64 reference of the same inputs. Results that copy input values (im2col, the max-pool
forward's values and argmax) must be exact instead."""

ALGORITHM_TOLERANCES: Mapping[str, Mapping[str, float]] = {
    "winograd": {"float32": 1e-4, "float64": 1e-12},
}
"""Tolerances of convolution algorithms whose rounding error exceeds :data:`TOLERANCES` by design
(Winograd F(4x4,3x3) in float32: about 4-8x that of a direct sum); other algorithms use TOLERANCES."""

_DTYPES = ("float32", "float64")


def _window_hits(out: int, s: int, start_pad: int, k: int, d: int, size: int) -> bool:
    """Whether every one of ``out`` windows (rows o*s - start_pad + i*d, i < k) holds an input row."""
    return all(any(0 <= o * s - start_pad + i * d < size for i in range(k)) for o in range(out))


@dataclass(frozen=True)
class Case:
    """One geometry: input x (N, C, H, W), ``filters`` filters of ``kernel`` (kh, kw), stride, pad,
    dilation, ``groups`` and the pools' ``ceil_mode``.

    ``pad`` is given as an (h, w) pair (symmetric) or (top, bottom, left, right) and stored as the
    latter, the form kernels take. Every kernel runs on every case: the convolutions with W
    (filters, C // groups, kh, kw), the pools with a (kh, kw) window (average pooling without the
    dilation) and ``out_hw`` from PyTorch's floor or ceil rule, im2col/col2im with (kh, kw). A pool
    is skipped on a case where one of its windows would hold no input element (the contract's
    callers never ask for that).
    """

    name: str
    x_shape: Shape4
    filters: int
    kernel: Pair
    stride: Pair = (1, 1)
    pad: Pair | Pad4 = (0, 0, 0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pad", ref.pad4(self.pad))
        c, f, g = self.x_shape[1], self.filters, self.groups
        if g < 1 or c % g or f % g:
            raise ValueError(f"Case {self.name!r}: groups {g} must divide C={c} and filters={f}")

    @property
    def w_shape(self) -> Shape4:
        """(F, C // groups, kh, kw)."""
        return (self.filters, self.x_shape[1] // self.groups, *self.kernel)

    @property
    def out_hw(self) -> Pair:
        """(OH, OW) of the convolution (floor mode)."""
        return self._out_hw(self.dilation, ceil=False)

    def pool_out_hw(self, kind: str) -> Pair:
        """(OH, OW) of the "max" pool (with dilation) or the "avg" pool (without), ceil mode if set."""
        return self._out_hw(self.dilation if kind == "max" else (1, 1), ceil=self.ceil_mode)

    def pool_fits(self, kind: str) -> bool:
        """Whether every window of that pool holds at least one input element."""
        (h, w), (kh, kw), (sh, sw) = self.x_shape[2:], self.kernel, self.stride
        (dh, dw), (oh, ow) = (self.dilation if kind == "max" else (1, 1)), self.pool_out_hw(kind)
        return _window_hits(oh, sh, self.pad[0], kh, dh, h) and _window_hits(ow, sw, self.pad[2], kw, dw, w)

    def _out_hw(self, dilation: Pair, ceil: bool) -> Pair:
        (h, w), (kh, kw), (sh, sw), (t, b, l, r) = self.x_shape[2:], self.kernel, self.stride, self.pad
        return (
            ref.pool_out_size(h, kh, sh, t, dilation[0], ceil, b),
            ref.pool_out_size(w, kw, sw, l, dilation[1], ceil, r),
        )

    def __str__(self) -> str:
        extra = (f", groups {self.groups}" if self.groups != 1 else "") + (
            ", ceil_mode" if self.ceil_mode else ""
        )
        return (
            f"{self.name}: x {self.x_shape}, W {self.w_shape}, stride {self.stride}, "
            f"pad {self.pad}, dilation {self.dilation}{extra}"
        )


CASES: tuple[Case, ...] = (
    # Case(name, x (N, C, H, W), filters, (kh, kw), stride, pad, dilation, groups, ceil_mode)
    Case("2x2 stride 2", (2, 3, 6, 8), 4, (2, 2), (2, 2)),
    Case("3x3 same padding", (2, 3, 7, 6), 5, (3, 3), (1, 1), (1, 1)),
    Case("non-square everything", (2, 3, 7, 9), 4, (3, 2), (2, 1), (1, 0), (1, 2)),
    Case("dilation", (2, 2, 9, 8), 3, (2, 3), (1, 2), (0, 1), (3, 2)),
    Case("stride larger than kernel", (2, 2, 10, 7), 3, (2, 1), (3, 4), (1, 0)),
    Case("border windows read only padding", (2, 2, 3, 4), 3, (2, 2), (1, 1), (2, 2)),
    Case("window = input", (3, 2, 5, 4), 2, (5, 4)),
    Case("dilated window = padded input", (1, 2, 3, 3), 2, (3, 2), (1, 1), (1, 1), (2, 3)),
    Case("window larger than input", (2, 2, 2, 3), 2, (3, 4), (1, 1), (1, 1)),
    Case("single pixel", (2, 3, 1, 1), 2, (1, 1)),
    Case("1x1 kernel, one channel", (2, 1, 4, 5), 3, (1, 1)),
    Case("1x1 kernel, stride 2", (2, 5, 5, 6), 7, (1, 1), (2, 2)),
    Case("batch of 1, many channels", (1, 35, 5, 4), 6, (3, 3), (1, 1), (1, 1)),
    Case("large image", (2, 2, 18, 17), 3, (3, 3), (1, 1), (1, 1)),
    # contract v2: asymmetric pads, groups, ceil mode
    Case("asymmetric pad", (2, 3, 7, 6), 4, (3, 3), (1, 1), (0, 2, 1, 0)),
    Case("asymmetric pad, stride and dilation", (2, 2, 9, 8), 3, (3, 2), (2, 1), (2, 0, 0, 1), (1, 2)),
    Case("groups 2", (2, 4, 6, 7), 6, (3, 2), (1, 2), (1, 0, 1, 1), groups=2),
    Case("depthwise", (2, 5, 6, 7), 5, (3, 3), (1, 1), (1, 1), groups=5),
    Case("depthwise multiplier 2, stride 2", (2, 3, 8, 7), 6, (3, 3), (2, 2), (1, 0, 1, 1), groups=3),
    Case("depthwise, many channels", (1, 33, 4, 5), 33, (3, 3), (1, 1), (1, 1), groups=33),
    # ceil mode: one more row, and on the width the extra window would start in the padding: dropped
    Case("ceil mode", (2, 3, 7, 8), 4, (3, 2), (2, 2), (1, 0, 0, 1), ceil_mode=True),
    Case("ceil mode, dilation, groups", (2, 4, 9, 8), 2, (2, 3), (3, 2), (1, 0), (2, 1), 2, True),
    Case("ceil mode, window = 1 row past the input", (1, 2, 5, 5), 2, (2, 2), (2, 2), ceil_mode=True),
)
"""The cases :func:`check_backend` runs by default; small, so that the direct-loop references stay fast."""


@dataclass(frozen=True)
class BackendReport:
    """What :func:`check_backend` measured when every check passed.

    ``max_errors[kernel][dtype]`` is the largest error of that kernel's results over all cases, as
    max|got - want| / max(1, max|want|) (0.0 for the exact kernels); ``str(report)`` is a short table.
    """

    backend: str
    checks: int
    cases: int
    dtypes: tuple[str, ...]
    max_errors: dict[str, dict[str, float]]
    tolerances: dict[str, float]

    def __str__(self) -> str:
        head = (
            f"backend {self.backend!r}: {self.checks} checks passed on {self.cases} cases x "
            f"{len(self.dtypes)} dtypes; max error ({' / '.join(self.dtypes)}):"
        )
        rows = [
            f"  {kernel:<26} " + " / ".join(f"{errors.get(dt, 0.0):.1e}" for dt in self.dtypes)
            for kernel, errors in self.max_errors.items()
        ]
        return "\n".join([head, *rows])


@dataclass(frozen=True)
class Failure:
    """One failed check: the kernel (or "contract", "to_device", "to_host"), the case (None outside
    the cases), where (case, dtype and variant, as text) and what went wrong, with the largest error."""

    kernel: str
    case: Case | None
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.kernel} [{self.where}]: {self.what}" if self.where else f"{self.kernel}: {self.what}"


class BackendCheckError(AssertionError):
    """:func:`check_backend` found contract violations; ``failures`` holds one :class:`Failure` each."""

    def __init__(self, message: str, failures: Sequence[Failure]) -> None:
        super().__init__(message)
        self.failures = list(failures)


# ---------------------------------------------------------------------------------------------------
# The checker: counts checks, collects failures and per-kernel errors
# ---------------------------------------------------------------------------------------------------


def _at(index: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in index)


def _error(got: np.ndarray, want: np.ndarray) -> tuple[float, str]:
    """max|got - want| / max(1, max|want|), and where it is largest, for the failure message.

    inf where got and want disagree on NaN or infinity (NaN matches NaN, inf matches inf of the same sign).
    """
    g = np.asarray(got, np.float64)
    finite = np.isfinite(want)
    same_special = (g == want) | (np.isnan(g) & np.isnan(want))
    bad = (finite != np.isfinite(g)) | (~finite & ~same_special)
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), want.shape)
        return math.inf, f" (at {_at(at)}: got {float(g[at])!r}, want {float(want[at])!r})"
    if not finite.any():
        return 0.0, ""
    diff = np.abs(g - np.where(finite, want, 0.0), where=finite, out=np.zeros_like(g))
    at = np.unravel_index(int(np.argmax(diff)), want.shape)
    error = float(diff[at]) / max(1.0, float(np.abs(want[finite]).max()))
    return error, (f" (at {_at(at)}: got {float(g[at])!r}, want {float(want[at])!r})" if error else "")


@dataclass
class _Checker:
    backend: Any
    tolerances: dict[str, float]
    checks: int = 0
    failures: list[Failure] = field(default_factory=list)
    max_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    case: Case | None = None  # the case being checked, for the failures
    layouts: tuple[str, ...] = LAYOUTS  # the layouts being checked

    def check(self, ok: bool, kernel: str, where: str, what: str) -> bool:
        """Count one check; record a failure unless ``ok``. Returns ``ok``."""
        self.checks += 1
        if not ok:
            self.failures.append(Failure(kernel, self.case, where, what))
        return ok

    def record(self, kernel: str, dtype: str, error: float) -> None:
        errors = self.max_errors.setdefault(kernel, {})
        errors[dtype] = max(errors.get(dtype, 0.0), error)

    def result(
        self, kernel: str, where: str, name: str, got: np.ndarray | None, shape: tuple[int, ...], dtype: str
    ) -> np.ndarray | None:
        """``got`` when it is an array (not None) of ``shape`` and ``dtype``, else None."""
        if got is None:
            self.check(False, kernel, where, f"{name} is None")
            return None
        shape_ok = self.check(
            tuple(got.shape) == shape, kernel, where, f"{name} has shape {tuple(got.shape)}, expected {shape}"
        )
        dtype_ok = self.check(
            got.dtype.name == dtype, kernel, where, f"{name} has dtype {got.dtype}, expected {dtype}"
        )
        return got if shape_ok and dtype_ok else None

    def close(
        self,
        kernel: str,
        where: str,
        name: str,
        got: np.ndarray,
        want: np.ndarray,
        dtype: str,
        tol: float | None = None,
    ) -> None:
        """``got`` within ``tol`` (default: the dtype's tolerance) of the float64 ``want``."""
        error, detail = _error(got, want)
        self.record(kernel, dtype, error)
        tol = self.tolerances[dtype] if tol is None else tol
        self.check(error <= tol, kernel, where, f"{name}: max error {error:.3g} > tolerance {tol:g}{detail}")

    def exact(
        self, kernel: str, where: str, name: str, got: np.ndarray, want: np.ndarray, dtype: str
    ) -> None:
        """``got`` equal to ``want`` (NaN equal to NaN), for results that copy input values."""
        error, detail = _error(got, want)
        self.record(kernel, dtype, error)
        ok = bool(np.array_equal(np.asarray(got, np.float64), want, equal_nan=True))
        self.check(
            ok, kernel, where, f"{name}: not an exact copy of the input values (error {error:.3g}){detail}"
        )

    def run(
        self,
        kernel: str,
        where: str,
        inputs: Mapping[str, np.ndarray],
        call: Callable[[dict[str, Any]], Any],
        names: Sequence[str],
    ) -> list[np.ndarray | None] | None:
        """Call ``call({input name: device array})`` twice and check what the contract asks of any call.

        Both calls succeed and return ``len(names)`` results (an array, or a tuple of them); the inputs
        are unchanged; each result is an array of the backend (``owns``) that shares no memory with an
        input nor with the other call's result; both calls give identical bits. Returns the first
        call's results on the host (None where a result is None or not the backend's), or None when a
        call raised or returned the wrong number of results.
        """
        b = self.backend
        device = {k: b.to_device(v.copy()) for k, v in inputs.items()}
        outs: list[list[Any]] = []
        for _ in range(2):
            try:
                out = call(device)
            except Exception as exc:  # noqa: BLE001 - any exception is a failed check
                self.check(False, kernel, where, f"raised {type(exc).__name__}: {exc}")
                return None
            out = list(out) if isinstance(out, tuple) else [out]
            expected = f"expected {len(names)} ({', '.join(names)})"
            if not self.check(
                len(out) == len(names), kernel, where, f"returned {len(out)} results, {expected}"
            ):
                return None
            outs.append(out)
        for k, v in inputs.items():
            after = np.asarray(b.to_host(device[k]))
            same = after.shape == v.shape and after.dtype == v.dtype and after.tobytes() == v.tobytes()
            self.check(same, kernel, where, f"modified its input {k}")
        xp = getattr(b, "xp", None)
        share = getattr(xp, "may_share_memory", None) or getattr(xp, "shares_memory", None)
        hosts: list[np.ndarray | None] = []
        for name, first, second in zip(names, outs[0], outs[1]):
            host = None
            if first is not None and second is not None:
                what = f"{name} is a {type(first).__module__}.{type(first).__name__}, not an array of the backend"
                if self.check(bool(b.owns(first)), kernel, where, what):
                    host = self._fresh_and_deterministic(kernel, where, name, first, second, device, share)
            hosts.append(host)
        return hosts

    def _fresh_and_deterministic(
        self,
        kernel: str,
        where: str,
        name: str,
        first: Any,
        second: Any,
        device: dict[str, Any],
        share: Callable[[Any, Any], bool] | None,
    ) -> np.ndarray:
        if share is not None:
            views = [k for k, d in device.items() if share(first, d)]
            what = f"{name} is a view of its input {', '.join(views)}, not a fresh array"
            if self.check(not views, kernel, where, what):
                what = f"{name} of two calls share memory: a reused buffer, not a fresh array"
                self.check(not share(first, second), kernel, where, what)
        host, again = np.asarray(self.backend.to_host(first)), np.asarray(self.backend.to_host(second))
        self.check(
            host.shape == again.shape and host.tobytes() == again.tobytes(),
            kernel,
            where,
            f"{name} differs between two calls with the same inputs (not deterministic)",
        )
        return host


# ---------------------------------------------------------------------------------------------------
# One check per kernel, on one case in one dtype (and each layout)
# ---------------------------------------------------------------------------------------------------


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _in(layout: str, a: np.ndarray) -> np.ndarray:
    """An NCHW host array in the order of ``layout``."""
    return a if layout == "NCHW" else _nhwc(a)


def _shape_in(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return shape if layout == "NCHW" else (n, h, w, c)


@dataclass
class _Data:
    """Random inputs of one case in one dtype (host arrays, NCHW; :func:`_in` gives NHWC copies)."""

    case: Case
    dtype: str
    where: str
    x: np.ndarray  # (N, C, H, W), standard normal
    W: np.ndarray  # (F, C // groups, kh, kw)
    b: np.ndarray  # (F,)
    dout: np.ndarray  # (N, F, OH, OW)
    col: np.ndarray  # (N*OH*OW, C*kh*kw)
    ties: np.ndarray  # (N, C, H, W): integers in [-3, 3] (many ties) and 5% -inf
    nans: np.ndarray  # ties with 10% NaN
    dmax: np.ndarray  # (N, C, OH, OW) of the max pool
    davg: np.ndarray  # (N, C, OH, OW) of the average pool
    rng: np.random.Generator

    @classmethod
    def make(cls, case: Case, dtype: str, rng: np.random.Generator) -> _Data:
        dt = np.dtype(dtype)
        (n, c, _, _), (kh, kw), f = case.x_shape, case.kernel, case.filters
        oh, ow = case.out_hw

        def normal(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape).astype(dt)

        ties = rng.integers(-3, 4, case.x_shape).astype(dt)
        ties[rng.random(case.x_shape) < 0.05] = -np.inf
        nans = ties.copy()
        nans[rng.random(case.x_shape) < 0.1] = np.nan
        return cls(
            case=case,
            dtype=dtype,
            where=f"{case}, {dtype}",
            x=normal(*case.x_shape),
            W=normal(*case.w_shape),
            b=normal(f),
            dout=normal(n, f, oh, ow),
            col=normal(n * oh * ow, c * kh * kw),
            ties=ties,
            nans=nans,
            dmax=normal(n, c, *case.pool_out_hw("max")),
            davg=normal(n, c, *case.pool_out_hw("avg")),
            rng=rng,
        )

    @property
    def args(self) -> tuple[Pair, Pad4, Pair]:
        """(stride, pad, dilation), pad as (top, bottom, left, right)."""
        return self.case.stride, self.case.pad, self.case.dilation  # type: ignore[return-value]


def _check_im2col(c: _Checker, d: _Data) -> None:
    k, (kh, kw) = "im2col", d.case.kernel
    got = c.run(k, d.where, {"x": d.x}, lambda a: c.backend.im2col(a["x"], kh, kw, *d.args), ["col"])
    col = None if got is None else c.result(k, d.where, "col", got[0], d.col.shape, d.dtype)
    if col is not None:
        c.exact(k, d.where, "col", col, ref.im2col_direct(d.x, kh, kw, *d.args), d.dtype)


def _check_col2im(c: _Checker, d: _Data) -> None:
    k, b, (kh, kw), shape = "col2im", c.backend, d.case.kernel, d.case.x_shape
    got = c.run(k, d.where, {"col": d.col}, lambda a: b.col2im(a["col"], shape, kh, kw, *d.args), ["dx"])
    result = None if got is None else c.result(k, d.where, "dx", got[0], shape, d.dtype)
    if result is None:
        return
    dx = np.asarray(result, np.float64)
    c.close(k, d.where, "dx", dx, ref.col2im_direct(d.col, shape, kh, kw, *d.args), d.dtype)
    # The adjoint of the backend's own im2col: <im2col(x), col> = <x, col2im(col)>.
    try:
        xcol = np.asarray(b.to_host(b.im2col(b.to_device(d.x.copy()), kh, kw, *d.args)), np.float64)
    except Exception as exc:  # noqa: BLE001
        c.check(False, k, d.where, f"adjoint check: im2col raised {type(exc).__name__}: {exc}")
        return
    if xcol.shape != d.col.shape or not np.array_equal(xcol, ref.im2col_direct(d.x, kh, kw, *d.args)):
        return  # a wrong im2col is im2col's failure, reported by its own check
    col = d.col.astype(np.float64)
    lhs, rhs = float(np.vdot(xcol, col)), float(np.vdot(d.x.astype(np.float64), dx))
    error = abs(lhs - rhs) / max(1.0, float(np.vdot(np.abs(xcol), np.abs(col))))
    c.record(k, d.dtype, error)
    tol = c.tolerances[d.dtype]
    c.check(
        error <= tol,
        k,
        d.where,
        f"not the adjoint of im2col: <im2col(x), col> = {lhs!r} but <x, col2im(col)> = {rhs!r} "
        f"(error {error:.3g} > tolerance {tol:g})",
    )


def _algorithms(
    c: _Checker, d: _Data, direction: str, layout: str
) -> list[tuple[str, dict[str, str], float]]:
    """(kernel label, keyword arguments, tolerance) per convolution algorithm the backend declares
    and can run on this case and layout ("gemm" under the kernel's own name, the others as
    ``kernel[name]``); one plain call for a backend that declares none."""
    names = getattr(c.backend, "algorithms", None)
    if not names:
        return [("", {}, c.tolerances[d.dtype])]
    support = getattr(c.backend, "algorithm_support", None)
    x_shape = _shape_in(layout, d.case.x_shape)
    out = []
    for name in names:
        if name != "gemm" and support is not None:
            if support(name, direction, x_shape, d.W.shape, *d.args, d.case.groups, layout) is not None:
                continue
        tol = max(c.tolerances[d.dtype], ALGORITHM_TOLERANCES.get(name, {}).get(d.dtype, 0.0))
        out.append(("" if name == "gemm" else f"[{name}]", {"algorithm": name}, tol))
    return out


def _check_conv2d_forward(c: _Checker, d: _Data, layout: str) -> None:
    (n, _, _, _), f, groups = d.case.x_shape, d.case.filters, d.case.groups
    x, out_shape = _in(layout, d.x), _shape_in(layout, (n, f, *d.case.out_hw))
    for label, kw, tol in _algorithms(c, d, "forward", layout):
        k = "conv2d_forward" + label
        for bias in (d.b, None):
            where = f"{d.where}, {layout}" + (", b=None" if bias is None else ", with bias")
            inputs = {"x": x, "W": d.W} if bias is None else {"x": x, "W": d.W, "b": bias}

            def call(a: dict[str, Any], kw: dict[str, str] = kw) -> Any:
                return c.backend.conv2d_forward(a["x"], a["W"], a.get("b"), *d.args, groups, layout, **kw)

            got = c.run(k, where, inputs, call, ["y"])
            y = None if got is None else c.result(k, where, "y", got[0], out_shape, d.dtype)
            if y is not None:
                want = ref.conv2d(x, d.W, bias, *d.args, groups, layout)
                c.close(k, where, "y", y, want, d.dtype, tol)


def _conv_gradients(d: _Data, layout: str) -> dict[str, np.ndarray]:
    dx, dW, db = ref.conv2d_backward(d.dout, d.x, d.W, *d.args, d.case.groups)
    return {"dx": _in(layout, dx), "dW": dW, "db": db}


def _check_conv2d_backward(c: _Checker, d: _Data, layout: str) -> None:
    want, groups = _conv_gradients(d, layout), d.case.groups
    inputs = {"dout": _in(layout, d.dout), "x": _in(layout, d.x), "W": d.W}
    for label, kw, tol in _algorithms(c, d, "backward", layout):
        k = "conv2d_backward" + label
        for need_dx in (True, False):
            where = f"{d.where}, {layout}, need_dx={need_dx}"

            def call(a: dict[str, Any], need_dx: bool = need_dx, kw: dict[str, str] = kw) -> Any:
                return c.backend.conv2d_backward(
                    a["dout"], a["x"], a["W"], *d.args, groups, layout, need_dx=need_dx, **kw
                )

            got = c.run(k, where, inputs, call, ["dx", "dW", "db"])
            if got is None:
                continue
            if not need_dx:
                c.check(got[0] is None, k, where, "dx is not None although need_dx=False")
            for name, arr in zip(("dx", "dW", "db"), got):
                checked = (
                    c.result(k, where, name, arr, want[name].shape, d.dtype)
                    if need_dx or name != "dx"
                    else None
                )
                if checked is not None:
                    c.close(k, where, name, checked, want[name], d.dtype, tol)


def _check_conv2d_backward_data(c: _Checker, d: _Data, layout: str) -> None:
    k, where, groups = "conv2d_backward_data", f"{d.where}, {layout}", d.case.groups
    x_shape = _shape_in(layout, d.case.x_shape)

    def call(a: dict[str, Any]) -> Any:
        return c.backend.conv2d_backward_data(a["dout"], a["W"], x_shape, *d.args, groups, layout)

    got = c.run(k, where, {"dout": _in(layout, d.dout), "W": d.W}, call, ["dx"])
    dx = None if got is None else c.result(k, where, "dx", got[0], x_shape, d.dtype)
    if dx is not None:
        c.close(k, where, "dx", dx, _conv_gradients(d, layout)["dx"], d.dtype)


def _check_maxpool2d_forward(c: _Checker, d: _Data, layout: str) -> None:
    k, (kh, kw), (n, ch, _, _) = "maxpool2d_forward", d.case.kernel, d.case.x_shape
    out_hw = d.case.pool_out_hw("max")
    out = _shape_in(layout, (n, ch, *out_hw))
    for label, x in (("pooling data: ties and -inf", d.ties), ("pooling data: ties, -inf and NaN", d.nans)):
        where = f"{d.where}, {layout}, {label}"
        got = c.run(
            k,
            where,
            {"x": _in(layout, x)},
            lambda a: c.backend.maxpool2d_forward(a["x"], kh, kw, *d.args, out_hw, layout),
            ["y", "argmax"],
        )
        if got is None:
            continue
        y, argmax = got
        want_y, want_arg = (_in(layout, a) for a in ref.max_pool2d(x, d.case.kernel, *d.args, out_hw))
        y = c.result(k, where, "y", y, out, d.dtype)
        if y is not None:
            c.exact(k, where, "y", y, want_y, d.dtype)
        argmax = c.result(k, where, "argmax", argmax, out, "int32")
        if argmax is not None:
            wrong = np.argwhere(argmax != want_arg)
            what = ""
            if len(wrong):
                at = _at(wrong[0])
                nchw_at = at if layout == "NCHW" else (at[0], at[3], at[1], at[2])
                what = (
                    "argmax is not the first maximum in row-major window order (padding -inf, NaN the "
                    f"maximum) at {len(wrong)} outputs; first at {at}: got {int(argmax[at])}, want "
                    f"{int(want_arg[at])}, window {_window(x, d.case, nchw_at)}"
                )
            c.check(not len(wrong), k, where, what)


def _check_maxpool2d_backward(c: _Checker, d: _Data, layout: str) -> None:
    k, b, (kh, kw), where = "maxpool2d_backward", c.backend, d.case.kernel, f"{d.where}, {layout}"
    shape = _shape_in(layout, d.case.x_shape)
    out_hw = d.case.pool_out_hw("max")
    argmax = _in(layout, ref.max_pool2d(d.nans, d.case.kernel, *d.args, out_hw)[1].astype(np.int32))
    dout = _in(layout, d.dmax)
    got = c.run(
        k,
        where,
        {"dout": dout, "argmax": argmax},
        lambda a: b.maxpool2d_backward(a["dout"], a["argmax"], shape, kh, kw, *d.args, layout),
        ["dx"],
    )
    dx = None if got is None else c.result(k, where, "dx", got[0], shape, d.dtype)
    if dx is not None:
        want = ref.max_pool2d_backward(dout, argmax, shape, d.case.kernel, *d.args, layout)
        c.close(k, where, "dx", dx, want, d.dtype)
    for bad in (-1, kh * kw):
        wrong = argmax.copy()
        wrong.flat[int(d.rng.integers(wrong.size))] = bad
        try:
            b.maxpool2d_backward(b.to_device(dout.copy()), b.to_device(wrong), shape, kh, kw, *d.args, layout)
            raised = "nothing"
        except ValueError:
            raised = "ValueError"
        except Exception as exc:  # noqa: BLE001
            raised = f"{type(exc).__name__} ({exc})"
        what = f"an argmax value of {bad} (outside [0, {kh * kw})) raised {raised}, not ValueError"
        c.check(raised == "ValueError", k, where, what)


def _check_avgpool2d_forward(c: _Checker, d: _Data, layout: str) -> None:
    k, (kh, kw), (n, ch, _, _) = "avgpool2d_forward", d.case.kernel, d.case.x_shape
    stride, pad, _ = d.args
    out_hw = d.case.pool_out_hw("avg")
    out = _shape_in(layout, (n, ch, *out_hw))
    for include in (True, False):
        where = f"{d.where}, {layout}, count_include_pad={include}"
        got = c.run(
            k,
            where,
            {"x": _in(layout, d.x)},
            lambda a, include=include: c.backend.avgpool2d_forward(
                a["x"], kh, kw, stride, pad, out_hw, include, layout
            ),
            ["y"],
        )
        y = None if got is None else c.result(k, where, "y", got[0], out, d.dtype)
        if y is not None:
            want = ref.avg_pool2d(d.x, d.case.kernel, stride, pad, out_hw, include, "NCHW")
            c.close(k, where, "y", y, _in(layout, want), d.dtype)


def _check_avgpool2d_backward(c: _Checker, d: _Data, layout: str) -> None:
    k, (kh, kw) = "avgpool2d_backward", d.case.kernel
    stride, pad, _ = d.args
    shape = _shape_in(layout, d.case.x_shape)
    for include in (True, False):
        where = f"{d.where}, {layout}, count_include_pad={include}"
        got = c.run(
            k,
            where,
            {"dout": _in(layout, d.davg)},
            lambda a, include=include: c.backend.avgpool2d_backward(
                a["dout"], shape, kh, kw, stride, pad, include, layout
            ),
            ["dx"],
        )
        dx = None if got is None else c.result(k, where, "dx", got[0], shape, d.dtype)
        if dx is not None:
            want = ref.avg_pool2d_backward(d.davg, d.case.x_shape, d.case.kernel, stride, pad, include)
            c.close(k, where, "dx", dx, _in(layout, want), d.dtype)


def _window(x: np.ndarray, case: Case, at: tuple[int, ...]) -> list[list[float]]:
    """The (kh, kw) window of output ``at`` = (n, c, oh, ow) of the NCHW ``x``, padding as -inf,
    for failure messages."""
    n, c, a, bb = at
    (kh, kw), (sh, sw), (dh, dw) = case.kernel, case.stride, case.dilation
    top, _, left, _ = case.pad
    h, w = x.shape[2:]
    rows = [[(a * sh + i * dh - top, bb * sw + j * dw - left) for j in range(kw)] for i in range(kh)]
    return [
        [float(x[n, c, r, q]) if 0 <= r < h and 0 <= q < w else -math.inf for r, q in row] for row in rows
    ]


def _nchw_only(check: Callable[[_Checker, _Data], None]) -> Callable[[_Checker, _Data, str], None]:
    """im2col and col2im take NCHW only: run them once, with the first layout."""

    def run(c: _Checker, d: _Data, layout: str) -> None:
        if layout == c.layouts[0]:
            check(c, d)

    return run


def _if_pool_fits(
    kind: str, check: Callable[[_Checker, _Data, str], None]
) -> Callable[[_Checker, _Data, str], None]:
    """Pools run only on cases where every window holds an input element (callers guarantee it)."""

    def run(c: _Checker, d: _Data, layout: str) -> None:
        if d.case.pool_fits(kind):
            check(c, d, layout)

    return run


_CHECKS: dict[str, Callable[[_Checker, _Data, str], None]] = {
    "im2col": _nchw_only(_check_im2col),
    "col2im": _nchw_only(_check_col2im),
    "conv2d_forward": _check_conv2d_forward,
    "conv2d_backward": _check_conv2d_backward,
    "conv2d_backward_data": _check_conv2d_backward_data,
    "maxpool2d_forward": _if_pool_fits("max", _check_maxpool2d_forward),
    "maxpool2d_backward": _if_pool_fits("max", _check_maxpool2d_backward),
    "avgpool2d_forward": _if_pool_fits("avg", _check_avgpool2d_forward),
    "avgpool2d_backward": _if_pool_fits("avg", _check_avgpool2d_backward),
}
assert tuple(_CHECKS) == KERNELS


def _check_transfers(c: _Checker) -> None:
    """to_device gives an array the backend owns; to_host gives it back as an equal NumPy array."""
    b = c.backend
    host = np.arange(6, dtype=np.float64).reshape(1, 1, 2, 3)
    try:
        moved = b.to_device(host.copy())
        c.check(bool(b.owns(moved)), "to_device", "", "owns(to_device(x)) is False")
        back = b.to_host(moved)
    except Exception as exc:  # noqa: BLE001
        c.check(False, "to_device/to_host", "", f"raised {type(exc).__name__}: {exc}")
        return
    ok = isinstance(back, np.ndarray) and back.dtype == host.dtype and np.array_equal(back, host)
    c.check(ok, "to_host", "", "to_host(to_device(x)) is not a NumPy array equal to x")


def _missing(backend: Any, name: str, kernels: Sequence[str]) -> list[Failure]:
    """A failure per attribute of the contract that ``backend`` lacks (of the kernels, the selected
    ones), and one when it does not declare ``contract = 2`` (the functional API would then call it
    with the version-1 arguments)."""
    out = []
    for attr in (*_ATTRIBUTES, *(k for k in KERNELS if k in kernels)):
        if not hasattr(backend, attr):
            what = (
                f"backend {name!r} lacks {attr} (contract v2)"
                if attr in NEW_KERNELS
                else f"missing attribute {attr}"
            )
            out.append(Failure("contract", None, "", what))
    version = getattr(backend, "contract", None)
    if version != CONTRACT:
        got = "has no contract attribute" if version is None else f"declares contract = {version!r}"
        out.append(
            Failure(
                "contract",
                None,
                "",
                f"backend {name!r} {got}: set contract = {CONTRACT} (the kernels take contract v2's "
                "arguments), else the functional API calls it with version 1's",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------------


def check_backend(
    backend: Any,
    *,
    dtypes: Iterable[str] = _DTYPES,
    seed: int = 0,
    cases: Iterable[Case] | None = None,
    kernels: Iterable[str] | None = None,
    tolerances: Mapping[str, float] | None = None,
    layouts: Iterable[str] = LAYOUTS,
) -> BackendReport:
    """Check ``backend`` against contract v2 of :mod:`fastconv.backends` and the float64 references.

    ``backend`` is a registered name (loaded with :func:`fastconv.get_backend_object`) or a backend
    object. Every selected kernel runs on every case in every dtype and layout, on random data drawn
    from ``seed``; inputs go to the backend with its ``to_device`` and come back with ``to_host``.
    ``cases`` defaults to :data:`CASES`, ``kernels`` to all of :data:`KERNELS`, ``tolerances`` (by
    dtype name) to :data:`TOLERANCES`, ``layouts`` to both "NCHW" and "NHWC" (im2col and col2im are
    NCHW only and run once).

    Returns a :class:`BackendReport` when every check passes; otherwise raises
    :class:`BackendCheckError` (an AssertionError) listing every failed check with its kernel, case,
    dtype, layout and error. A backend lacking a selected kernel fails before anything runs, each
    missing kernel named. ValueError for an unknown dtype, kernel or layout; a name of a backend
    that is unusable here raises :class:`fastconv.BackendUnavailableError`.
    """
    if isinstance(backend, str):
        from fastconv import get_backend_object

        obj, name = get_backend_object(backend), backend
    else:
        obj, name = backend, str(getattr(backend, "name", type(backend).__name__))
    dtype_names = tuple(np.dtype(dt).name for dt in ((dtypes,) if isinstance(dtypes, str) else dtypes))
    if not dtype_names or any(dt not in _DTYPES for dt in dtype_names):
        raise ValueError(f"dtypes must be a non-empty selection of {_DTYPES}, got {dtype_names}")
    selected = tuple(KERNELS if kernels is None else (kernels,) if isinstance(kernels, str) else kernels)
    if not selected or any(k not in KERNELS for k in selected):
        raise ValueError(f"kernels must be a non-empty selection of {KERNELS}, got {selected}")
    layout_names = tuple((layouts,) if isinstance(layouts, str) else layouts)
    if not layout_names or any(lay not in LAYOUTS for lay in layout_names):
        raise ValueError(f"layouts must be a non-empty selection of {LAYOUTS}, got {layout_names}")
    case_list = list(CASES if cases is None else cases)
    if not case_list or not all(isinstance(cs, Case) for cs in case_list):
        raise ValueError("cases must be a non-empty iterable of fastconv.testing.Case")

    missing = _missing(obj, name, selected)
    if missing:
        lines = "\n  ".join(map(str, missing))
        raise BackendCheckError(f"backend {name!r} does not implement the contract:\n  {lines}", missing)

    c = _Checker(obj, {**TOLERANCES, **(tolerances or {})}, layouts=layout_names)
    _check_transfers(c)
    for case in case_list:
        c.case = case
        for dtype in dtype_names:
            # The data depend on the seed, case name and dtype only, not on which other cases run.
            key = [seed, zlib.crc32(case.name.encode()), _DTYPES.index(dtype)]
            data = _Data.make(case, dtype, np.random.default_rng(key))
            for kernel in selected:
                for layout in layout_names:
                    _CHECKS[kernel](c, data, layout)

    if c.failures:
        counts: dict[str, int] = {}
        for failure in c.failures:
            counts[failure.kernel] = counts.get(failure.kernel, 0) + 1
        summary = ", ".join(f"{k} ({v})" for k, v in counts.items())
        lines = "\n  ".join(map(str, c.failures))
        raise BackendCheckError(
            f"backend {name!r} failed {len(c.failures)} of {c.checks} checks, in {summary}:\n  {lines}",
            c.failures,
        )
    return BackendReport(
        backend=name,
        checks=c.checks,
        cases=len(case_list),
        dtypes=dtype_names,
        max_errors={
            label: errors
            for k in selected
            for label, errors in [(k, c.max_errors.get(k, {}))]
            + [(x, e) for x, e in c.max_errors.items() if x.startswith(k + "[")]
        },
        tolerances={dt: c.tolerances[dt] for dt in dtype_names},
    )
