"""Check a backend against the contract of :mod:`fastconv.backends` and the float64 references.

The public names are re-exported by :mod:`fastconv.testing`, whose docstring shows how to use them.
Each kernel has one ``_check_<kernel>`` function below; :func:`check_backend` runs them on every
case and dtype and collects the failures.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv.backends import KERNELS, missing_attributes
from fastconv.testing import reference as ref

__all__ = [
    "ALGORITHM_TOLERANCES",
    "CASES",
    "TOLERANCES",
    "BackendCheckError",
    "BackendReport",
    "Case",
    "Failure",
    "check_backend",
]

Pair = tuple[int, int]
Shape4 = tuple[int, int, int, int]

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


@dataclass(frozen=True)
class Case:
    """One geometry: input x (N, C, H, W), ``filters`` filters of ``kernel`` (kh, kw), stride/pad/dilation.

    Every kernel runs on every case: the convolutions with W (filters, C, kh, kw), the max pooling
    with a (kh, kw) window, im2col/col2im with (kh, kw).
    """

    name: str
    x_shape: Shape4
    filters: int
    kernel: Pair
    stride: Pair = (1, 1)
    pad: Pair = (0, 0)
    dilation: Pair = (1, 1)

    @property
    def w_shape(self) -> Shape4:
        """(F, C, kh, kw)."""
        return (self.filters, self.x_shape[1], *self.kernel)

    @property
    def out_hw(self) -> Pair:
        """(OH, OW), floor mode."""
        (h, w), (kh, kw) = self.x_shape[2:], self.kernel
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.pad, self.dilation
        return ref.out_size(h, kh, sh, ph, dh), ref.out_size(w, kw, sw, pw, dw)

    def __str__(self) -> str:
        return (
            f"{self.name}: x {self.x_shape}, W {self.w_shape}, stride {self.stride}, "
            f"pad {self.pad}, dilation {self.dilation}"
        )


CASES: tuple[Case, ...] = (
    # Case(name, x (N, C, H, W), filters, (kh, kw), stride, pad, dilation)
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
            f"  {kernel:<19} " + " / ".join(f"{errors.get(dt, 0.0):.1e}" for dt in self.dtypes)
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
# One check per kernel, on one case in one dtype
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """Random inputs of one case in one dtype (host arrays)."""

    case: Case
    dtype: str
    where: str
    x: np.ndarray  # (N, C, H, W), standard normal
    W: np.ndarray  # (F, C, kh, kw)
    b: np.ndarray  # (F,)
    dout: np.ndarray  # (N, F, OH, OW)
    col: np.ndarray  # (N*OH*OW, C*kh*kw)
    ties: np.ndarray  # (N, C, H, W): integers in [-3, 3] (many ties) and 5% -inf
    nans: np.ndarray  # ties with 10% NaN
    dpool: np.ndarray  # (N, C, OH, OW)
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
            dpool=normal(n, c, oh, ow),
            rng=rng,
        )

    @property
    def args(self) -> tuple[Pair, Pair, Pair]:
        """(stride, pad, dilation)."""
        return self.case.stride, self.case.pad, self.case.dilation


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


def _algorithms(c: _Checker, d: _Data, direction: str) -> list[tuple[str, dict[str, str], float]]:
    """(kernel label, keyword arguments, tolerance) per convolution algorithm the backend declares
    and can run on this case ("gemm" under the kernel's own name, the others as ``kernel[name]``);
    one plain call for a backend that declares none."""
    names = getattr(c.backend, "algorithms", None)
    if not names:
        return [("", {}, c.tolerances[d.dtype])]
    support = getattr(c.backend, "algorithm_support", None)
    out = []
    for name in names:
        if name != "gemm" and support is not None:
            if support(name, direction, d.case.x_shape, d.W.shape, *d.args) is not None:
                continue
        tol = max(c.tolerances[d.dtype], ALGORITHM_TOLERANCES.get(name, {}).get(d.dtype, 0.0))
        out.append(("" if name == "gemm" else f"[{name}]", {"algorithm": name}, tol))
    return out


def _check_conv2d_forward(c: _Checker, d: _Data) -> None:
    (n, _, _, _), f = d.case.x_shape, d.case.filters
    for label, kw, tol in _algorithms(c, d, "forward"):
        k = "conv2d_forward" + label
        for bias in (d.b, None):
            where = d.where + (", b=None" if bias is None else ", with bias")
            inputs = {"x": d.x, "W": d.W} if bias is None else {"x": d.x, "W": d.W, "b": bias}

            def call(a: dict[str, Any], kw: dict[str, str] = kw) -> Any:
                return c.backend.conv2d_forward(a["x"], a["W"], a.get("b"), *d.args, **kw)

            got = c.run(k, where, inputs, call, ["y"])
            y = None if got is None else c.result(k, where, "y", got[0], (n, f, *d.case.out_hw), d.dtype)
            if y is not None:
                c.close(k, where, "y", y, ref.conv2d(d.x, d.W, bias, *d.args), d.dtype, tol)


def _check_conv2d_backward(c: _Checker, d: _Data) -> None:
    want = dict(zip(("dx", "dW", "db"), ref.conv2d_backward(d.dout, d.x, d.W, *d.args)))
    for label, kw, tol in _algorithms(c, d, "backward"):
        k = "conv2d_backward" + label
        for need_dx in (True, False):
            where = f"{d.where}, need_dx={need_dx}"

            def call(a: dict[str, Any], need_dx: bool = need_dx, kw: dict[str, str] = kw) -> Any:
                return c.backend.conv2d_backward(a["dout"], a["x"], a["W"], *d.args, need_dx=need_dx, **kw)

            got = c.run(k, where, {"dout": d.dout, "x": d.x, "W": d.W}, call, ["dx", "dW", "db"])
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


def _check_maxpool2d_forward(c: _Checker, d: _Data) -> None:
    k, (kh, kw), (n, ch, _, _) = "maxpool2d_forward", d.case.kernel, d.case.x_shape
    out = (n, ch, *d.case.out_hw)
    for label, x in (("pooling data: ties and -inf", d.ties), ("pooling data: ties, -inf and NaN", d.nans)):
        where = f"{d.where}, {label}"
        got = c.run(
            k,
            where,
            {"x": x},
            lambda a: c.backend.maxpool2d_forward(a["x"], kh, kw, *d.args),
            ["y", "argmax"],
        )
        if got is None:
            continue
        y, argmax = got
        want_y, want_arg = ref.max_pool2d(x, d.case.kernel, *d.args)
        y = c.result(k, where, "y", y, out, d.dtype)
        if y is not None:
            c.exact(k, where, "y", y, want_y, d.dtype)
        argmax = c.result(k, where, "argmax", argmax, out, "int32")
        if argmax is not None:
            wrong = np.argwhere(argmax != want_arg)
            what = ""
            if len(wrong):
                at = _at(wrong[0])
                what = (
                    "argmax is not the first maximum in row-major window order (padding -inf, NaN the "
                    f"maximum) at {len(wrong)} outputs; first at {at}: got {int(argmax[at])}, want "
                    f"{int(want_arg[at])}, window {_window(x, d.case, at)}"
                )
            c.check(not len(wrong), k, where, what)


def _check_maxpool2d_backward(c: _Checker, d: _Data) -> None:
    k, b, (kh, kw), shape = "maxpool2d_backward", c.backend, d.case.kernel, d.case.x_shape
    argmax = ref.max_pool2d(d.nans, d.case.kernel, *d.args)[1].astype(np.int32)
    got = c.run(
        k,
        d.where,
        {"dout": d.dpool, "argmax": argmax},
        lambda a: b.maxpool2d_backward(a["dout"], a["argmax"], shape, kh, kw, *d.args),
        ["dx"],
    )
    dx = None if got is None else c.result(k, d.where, "dx", got[0], shape, d.dtype)
    if dx is not None:
        want = ref.max_pool2d_backward(d.dpool, argmax, shape, d.case.kernel, *d.args)
        c.close(k, d.where, "dx", dx, want, d.dtype)
    for bad in (-1, kh * kw):
        wrong = argmax.copy()
        wrong.flat[int(d.rng.integers(wrong.size))] = bad
        try:
            b.maxpool2d_backward(b.to_device(d.dpool.copy()), b.to_device(wrong), shape, kh, kw, *d.args)
            raised = "nothing"
        except ValueError:
            raised = "ValueError"
        except Exception as exc:  # noqa: BLE001
            raised = f"{type(exc).__name__} ({exc})"
        what = f"an argmax value of {bad} (outside [0, {kh * kw})) raised {raised}, not ValueError"
        c.check(raised == "ValueError", k, d.where, what)


def _window(x: np.ndarray, case: Case, at: tuple[int, ...]) -> list[list[float]]:
    """The (kh, kw) window of output ``at`` = (n, c, oh, ow), padding as -inf, for failure messages."""
    n, c, a, bb = at
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel, case.stride, case.pad, case.dilation
    h, w = x.shape[2:]
    rows = [[(a * sh + i * dh - ph, bb * sw + j * dw - pw) for j in range(kw)] for i in range(kh)]
    return [
        [float(x[n, c, r, q]) if 0 <= r < h and 0 <= q < w else -math.inf for r, q in row] for row in rows
    ]


_CHECKS: dict[str, Callable[[_Checker, _Data], None]] = {
    "im2col": _check_im2col,
    "col2im": _check_col2im,
    "conv2d_forward": _check_conv2d_forward,
    "conv2d_backward": _check_conv2d_backward,
    "maxpool2d_forward": _check_maxpool2d_forward,
    "maxpool2d_backward": _check_maxpool2d_backward,
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
) -> BackendReport:
    """Check ``backend`` against the contract of :mod:`fastconv.backends` and the float64 references.

    ``backend`` is a registered name (loaded with :func:`fastconv.get_backend_object`) or a backend
    object. Every selected kernel runs on every case in every dtype, on random data drawn from
    ``seed``; inputs go to the backend with its ``to_device`` and come back with ``to_host``.
    ``cases`` defaults to :data:`CASES`, ``kernels`` to all six, ``tolerances`` (by dtype name) to
    :data:`TOLERANCES`.

    Returns a :class:`BackendReport` when every check passes; otherwise raises
    :class:`BackendCheckError` (an AssertionError) listing every failed check with its kernel, case,
    dtype and error. ValueError for an unknown dtype or kernel name; a name of a backend that is
    unusable here raises :class:`fastconv.BackendUnavailableError`.
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
    case_list = list(CASES if cases is None else cases)
    if not case_list or not all(isinstance(cs, Case) for cs in case_list):
        raise ValueError("cases must be a non-empty iterable of fastconv.testing.Case")

    missing = missing_attributes(obj)
    if missing:
        failures = [Failure("contract", None, "", f"missing attribute {attr}") for attr in missing]
        lines = "\n  ".join(map(str, failures))
        raise BackendCheckError(f"backend {name!r} does not implement the contract:\n  {lines}", failures)

    c = _Checker(obj, {**TOLERANCES, **(tolerances or {})})
    _check_transfers(c)
    for case in case_list:
        c.case = case
        for dtype in dtype_names:
            # The data depend on the seed, case name and dtype only, not on which other cases run.
            key = [seed, zlib.crc32(case.name.encode()), _DTYPES.index(dtype)]
            data = _Data.make(case, dtype, np.random.default_rng(key))
            for kernel in selected:
                _CHECKS[kernel](c, data)

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
