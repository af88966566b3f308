"""Gradient check: analytic gradients against central differences in float64.

``gradcheck`` accepts three kinds of target:

* a **network** with the book's API (``params`` dict, ``loss(x, t)``, ``gradient(x, t)``):
  ``gradcheck(net, x, t)`` checks every ``params[key]`` (the network must hold float64 parameters);
* a **layer** with ``forward``/``backward``: ``gradcheck(layer, x)`` checks ``dx`` and the layer's
  parameter gradients (``W``/``dW``, ``b``/``db``, ``gamma``/``dgamma``, ``beta``/``dbeta``) of the
  scalar ``sum(forward(x) * dout)`` for a fixed random ``dout``; a loss layer is checked with
  ``gradcheck(layer, x, t)`` (``forward(x, t)`` is the scalar, ``backward(1)`` its gradient);
* a **function** with its analytic backward: ``gradcheck(f, x, W, analytic=g)`` where
  ``f(*inputs) -> y`` and ``g(dout, *inputs) -> (grad for each input, None to skip)``.

The numerical gradient of element i is ``(f(p + eps e_i) - f(p - eps e_i)) / (2 eps)``. An element
passes when ``|analytic - numeric| <= rtol * max(|analytic|, |numeric|) + atol_eff``, where
``atol_eff = atol + 10 * 2**-52 * max(1, |f|) / eps`` adds the rounding noise of the difference
quotient. The defaults ``rtol=1e-3, atol=1e-5`` are PyTorch's; they leave room for the book's
``log(y + 1e-7)`` in the cross-entropy, which the analytic softmax gradient ignores (a relative bias
of about 1e-7 / y). Pass tighter tolerances for layers without it. The relative error reported per parameter is ``max |a - n| / (max(|a|, |n|) + atol_eff / rtol)``,
so a parameter passes exactly when its error is at most ``rtol``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv._arrays import array_module, to_host

__all__ = ["GradcheckError", "GradcheckResult", "gradcheck", "numerical_gradient"]

_LAYER_PARAMS = (("W", "dW"), ("b", "db"), ("gamma", "dgamma"), ("beta", "dbeta"))
_MACHINE_EPS = float(np.finfo(np.float64).eps)


def _scalar(v: Any) -> float:
    return float(to_host(v)) if hasattr(v, "shape") else float(v)


@dataclass
class GradcheckResult:
    """Per checked name: the maximum relative error (``errors``), the maximum absolute difference
    (``abs_errors``) and the number of elements checked (``checked``)."""

    errors: dict[str, float] = field(default_factory=dict)
    abs_errors: dict[str, float] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    rtol: float = 1e-3

    @property
    def passed(self) -> bool:
        return all(e <= self.rtol for e in self.errors.values())

    @property
    def failed(self) -> list[str]:
        return [k for k, e in self.errors.items() if e > self.rtol]

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        width = max([len(k) for k in self.errors] + [4])
        lines = [f"{'name':<{width}}  {'max rel err':>11}  {'max abs err':>11}  {'checked':>7}"]
        for k, e in self.errors.items():
            flag = "" if e <= self.rtol else f"  FAIL (rtol {self.rtol:g})"
            lines.append(f"{k:<{width}}  {e:11.3e}  {self.abs_errors[k]:11.3e}  {self.checked[k]:7d}{flag}")
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytic gradient disagrees with the numerical one."""

    def __init__(self, result: GradcheckResult) -> None:
        super().__init__(f"gradient check failed for {', '.join(result.failed)}:\n{result}")
        self.result = result


def _indices(size: int, max_elements: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_elements, replace=False))


def numerical_gradient(
    f: Callable[[], Any], a: Any, eps: float = 1e-6, indices: Sequence[int] | None = None
) -> Any:
    """Central-difference gradient of the scalar ``f()`` with respect to array ``a``, perturbed in place
    (and restored exactly). Only ``indices`` (flat) are computed when given; the others are left 0.

    a: any shape, float64 -> gradient of the same shape (host NumPy array).
    """
    grad = np.zeros(a.shape, dtype=np.float64)
    flat_grad = grad.reshape(-1)
    idx_iter = range(a.size) if indices is None else indices
    for i in idx_iter:
        pos = np.unravel_index(int(i), a.shape)
        orig = a[pos].copy() if hasattr(a[pos], "copy") else a[pos]
        a[pos] = orig + eps
        f_plus = _scalar(f())
        a[pos] = orig - eps
        f_minus = _scalar(f())
        a[pos] = orig
        flat_grad[int(i)] = (f_plus - f_minus) / (2 * eps)
    return grad


def _compare(
    name: str,
    analytic: Any,
    numeric: np.ndarray,
    idx: np.ndarray,
    f0: float,
    result: GradcheckResult,
    eps: float,
    rtol: float,
    atol: float,
) -> None:
    a = to_host(analytic).astype(np.float64).reshape(-1)[idx]
    n = numeric.reshape(-1)[idx]
    if to_host(analytic).shape != numeric.shape:
        raise ValueError(
            f"analytic gradient of {name} has shape {to_host(analytic).shape}, expected {numeric.shape}"
        )
    atol_eff = atol + 10 * _MACHINE_EPS * max(1.0, abs(f0)) / eps
    diff = np.abs(a - n)
    rel = diff / (np.maximum(np.abs(a), np.abs(n)) + atol_eff / rtol)
    result.errors[name] = float(rel.max()) if rel.size else 0.0
    result.abs_errors[name] = float(diff.max()) if diff.size else 0.0
    result.checked[name] = int(idx.size)


def _as_f64(a: Any) -> Any:
    return array_module(a).array(a, dtype=np.float64, copy=True)


def gradcheck(
    target: Any,
    *inputs: Any,
    analytic: Callable[..., Sequence[Any]] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    max_elements: int | None = 256,
    seed: int = 0,
    raise_exception: bool = True,
) -> GradcheckResult:
    """Compare analytic and numerical (central difference, float64) gradients.

    target: a network (``params``, ``loss``, ``gradient``) called as ``gradcheck(net, x, t)``; a layer
    (``forward``/``backward``) as ``gradcheck(layer, x)`` or, for a loss layer, ``gradcheck(layer, x, t)``;
    or a function ``f(*inputs) -> y`` with ``analytic=g``, ``g(dout, *inputs) -> grads``.
    max_elements: per parameter, check a seeded random subset of this many elements (None: all).
    Returns a :class:`GradcheckResult` (max relative error per parameter); raises GradcheckError
    when one exceeds ``rtol`` and ``raise_exception`` is true. Inputs are never modified.
    """
    if eps <= 0 or rtol <= 0 or atol < 0:
        raise ValueError(
            f"eps and rtol must be positive and atol >= 0, got eps={eps}, rtol={rtol}, atol={atol}"
        )
    if max_elements is not None and max_elements < 1:
        raise ValueError(f"max_elements must be None or >= 1, got {max_elements}")
    rng = np.random.default_rng(seed)
    result = GradcheckResult(rtol=rtol)

    if hasattr(target, "params") and hasattr(target, "gradient") and hasattr(target, "loss"):
        _check_network(target, inputs, result, rng, eps, rtol, atol, max_elements)
    elif hasattr(target, "forward") and hasattr(target, "backward"):
        _check_layer(target, inputs, result, rng, eps, rtol, atol, max_elements)
    elif callable(target):
        if analytic is None:
            raise TypeError("gradcheck of a function needs analytic=g with g(dout, *inputs) -> grads")
        _check_function(target, analytic, inputs, result, rng, eps, rtol, atol, max_elements)
    else:
        raise TypeError(
            f"target must be a network (params/loss/gradient), a layer (forward/backward) or a callable, "
            f"got {type(target).__name__}"
        )
    if not result.errors:
        raise ValueError("gradcheck found nothing to check: the target returned no gradients")
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


def _check_network(
    net: Any,
    inputs: Sequence[Any],
    result: GradcheckResult,
    rng: np.random.Generator,
    eps: float,
    rtol: float,
    atol: float,
    max_elements: int | None,
) -> None:
    if len(inputs) != 2:
        raise TypeError(
            f"gradcheck(net, x, t) takes the input batch and its labels, got {len(inputs)} inputs"
        )
    x, t = inputs
    bad = {k: str(p.dtype) for k, p in net.params.items() if p.dtype != np.float64}
    if bad:
        raise TypeError(f"gradcheck needs a float64 network (build it with dtype=np.float64); got {bad}")
    x = _as_f64(x)
    grads = net.gradient(x, t)
    grads = {k: to_host(g).copy() for k, g in grads.items()}
    f0 = _scalar(net.loss(x, t))
    for key, p in net.params.items():
        if key not in grads:
            raise ValueError(f"net.gradient returned no gradient for parameter {key!r}")
        idx = _indices(p.size, max_elements, rng)
        num = numerical_gradient(lambda: net.loss(x, t), p, eps, idx)
        _compare(key, grads[key], num, idx, f0, result, eps, rtol, atol)


def _check_layer(
    layer: Any,
    inputs: Sequence[Any],
    result: GradcheckResult,
    rng: np.random.Generator,
    eps: float,
    rtol: float,
    atol: float,
    max_elements: int | None,
) -> None:
    if len(inputs) not in (1, 2):
        raise TypeError(f"gradcheck(layer, x) or gradcheck(loss_layer, x, t), got {len(inputs)} inputs")
    x = _as_f64(inputs[0])
    is_loss = len(inputs) == 2
    t = inputs[1] if is_loss else None
    names = [(p, g) for p, g in _LAYER_PARAMS if hasattr(layer.__dict__.get(p, None), "shape")]
    saved = {p: getattr(layer, p) for p, _ in names}
    try:
        for p, _ in names:  # float64 copies for the check; the originals are put back below
            setattr(layer, p, _as_f64(saved[p]))
        if is_loss:

            def f() -> Any:
                return layer.forward(x, t)

            f0 = _scalar(f())
            dx = layer.backward(1)
        else:
            y = layer.forward(x)
            xp = array_module(y)
            dout = xp.asarray(rng.standard_normal(tuple(y.shape)))

            def f() -> Any:
                return (layer.forward(x) * dout).sum()

            f0 = _scalar((y * dout).sum())
            dx = layer.backward(dout)
        analytic = {"x": to_host(dx).copy()}
        for p, g in names:
            analytic[p] = to_host(getattr(layer, g)).copy()
        for name, arr in [("x", x)] + [(p, getattr(layer, p)) for p, _ in names]:
            idx = _indices(arr.size, max_elements, rng)
            num = numerical_gradient(f, arr, eps, idx)
            _compare(name, analytic[name], num, idx, f0, result, eps, rtol, atol)
    finally:
        for p, v in saved.items():
            setattr(layer, p, v)


def _check_function(
    fn: Callable[..., Any],
    analytic: Callable[..., Sequence[Any]],
    inputs: Sequence[Any],
    result: GradcheckResult,
    rng: np.random.Generator,
    eps: float,
    rtol: float,
    atol: float,
    max_elements: int | None,
) -> None:
    args = [_as_f64(a) if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.floating) else a for a in inputs]
    y = fn(*args)
    xp = array_module(y)
    dout = xp.asarray(rng.standard_normal(tuple(getattr(y, "shape", ()))))
    grads = analytic(dout, *args)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) > len(args):
        raise ValueError(f"analytic returned {len(grads)} gradients for {len(args)} inputs")
    f0 = _scalar((y * dout).sum())
    for i, g in enumerate(grads):
        if g is None:
            continue
        arr = args[i]
        idx = _indices(arr.size, max_elements, rng)
        num = numerical_gradient(lambda: (fn(*args) * dout).sum(), arr, eps, idx)
        _compare(f"input{i}", g, num, idx, f0, result, eps, rtol, atol)
