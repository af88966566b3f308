"""Optimizers with the book's ``update(params, grads)`` API.

Every optimizer updates the arrays of ``params`` IN PLACE (``params[key] -= ...``), as the book
does, so layers that hold the same arrays see the new values. State (velocities, squared-gradient
sums, moments, step count) lives in the optimizer and round-trips through :meth:`state_dict` /
:meth:`load_state_dict`, so a checkpoint resumes bit for bit.

The arithmetic uses only array methods and operators, plus ``xp.sqrt`` / ``xp.zeros_like`` from the
array's own module (NumPy or CuPy), so the same code runs on host and device arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastconv._arrays import array_module, to_host

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "make_optimizer",
]


def _like(host: np.ndarray, ref: Any) -> Any:
    """``host`` as an array of the same module, dtype and shape as ``ref``."""
    if tuple(host.shape) != tuple(ref.shape):
        raise ValueError(
            f"optimizer state has shape {tuple(host.shape)}, the parameter has {tuple(ref.shape)}"
        )
    xp = array_module(ref)
    return xp.asarray(host, dtype=ref.dtype).copy()


class Optimizer:
    """Base class: subclasses define ``_hyper`` (hyper-parameter names), ``_slots`` (per-parameter state)
    and ``_step``. ``lr`` is always a hyper-parameter."""

    name = "optimizer"
    _hyper: tuple[str, ...] = ("lr",)
    _slots: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        self.lr = lr
        self.iter = 0
        self.state: dict[str, dict[str, Any]] = {slot: {} for slot in self._slots}

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hyper)
        return f"{type(self).__name__}({args})"

    def _slot(self, slot: str, key: str, ref: Any) -> Any:
        buf = self.state[slot].get(key)
        if buf is None:
            buf = array_module(ref).zeros_like(ref)
            self.state[slot][key] = buf
        elif array_module(buf) is not array_module(ref) or buf.dtype != ref.dtype:
            buf = _like(to_host(buf), ref)  # state restored without params: place it like the parameter
            self.state[slot][key] = buf
        return buf

    def update(self, params: dict[str, Any], grads: Mapping[str, Any]) -> None:
        """Update every ``params[key]`` in place from ``grads[key]`` (same shapes)."""
        missing = [k for k in params if k not in grads]
        if missing:
            raise KeyError(f"grads has no entry for parameter(s) {missing}; got keys {sorted(grads)}")
        self.iter += 1
        for key, p in params.items():
            g = grads[key]
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(
                    f"grads[{key!r}] has shape {tuple(g.shape)}, params[{key!r}] has {tuple(p.shape)}"
                )
            self._step(key, p, g)

    def _step(self, key: str, p: Any, g: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, step count and per-parameter state, as host (NumPy) arrays.

        ``{"name": str, "iter": int, "hyper": {name: float}, "slots": {slot: {key: ndarray}}}``
        """
        return {
            "name": self.name,
            "iter": int(self.iter),
            "hyper": {h: float(getattr(self, h)) for h in self._hyper},
            "slots": {
                slot: {k: np.array(to_host(v)) for k, v in bufs.items()} for slot, bufs in self.state.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """Restore what :meth:`state_dict` returned. With ``params``, the state arrays are placed on the
        parameters' device with their dtype (else kept as NumPy arrays until the next update)."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, this optimizer is {self.name!r}")
        for h, v in state.get("hyper", {}).items():
            if h not in self._hyper:
                raise ValueError(f"unknown hyper-parameter {h!r} for {self.name}")
            setattr(self, h, float(v))
        self.iter = int(state["iter"])
        slots = state.get("slots", {})
        unknown = set(slots) - set(self._slots)
        if unknown:
            raise ValueError(f"unknown optimizer state {sorted(unknown)} for {self.name}")
        self.state = {slot: {} for slot in self._slots}
        for slot, bufs in slots.items():
            for k, v in bufs.items():
                if params is not None:
                    if k not in params:
                        raise ValueError(f"optimizer state names parameter {k!r}, which the model lacks")
                    self.state[slot][k] = _like(np.asarray(v), params[k])
                else:
                    self.state[slot][k] = np.array(v, copy=True)


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    name = "sgd"

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def _step(self, key: str, p: Any, g: Any) -> None:
        p -= self.lr * g


class Momentum(Optimizer):
    """Momentum SGD: ``v = momentum*v - lr*g; p += v``."""

    name = "momentum"
    _hyper = ("lr", "momentum")
    _slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = float(momentum)

    def _step(self, key: str, p: Any, g: Any) -> None:
        v = self._slot("v", key, p)
        v *= self.momentum
        v -= self.lr * g
        p += v


class Nesterov(Momentum):
    """Nesterov's accelerated gradient, in the book's form (Sutskever et al. reformulation):
    ``v = m*v - lr*g; p += m*m*v - (1 + m)*lr*g``."""

    name = "nesterov"

    def _step(self, key: str, p: Any, g: Any) -> None:
        v = self._slot("v", key, p)
        m = self.momentum
        v *= m
        v -= self.lr * g
        p += m * m * v
        p -= (1 + m) * self.lr * g


class AdaGrad(Optimizer):
    """AdaGrad: ``h += g*g; p -= lr * g / (sqrt(h) + eps)``."""

    name = "adagrad"
    _hyper = ("lr", "eps")
    _slots = ("h",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-7) -> None:
        super().__init__(lr)
        self.eps = float(eps)

    def _step(self, key: str, p: Any, g: Any) -> None:
        h = self._slot("h", key, p)
        h += g * g
        p -= self.lr * g / (array_module(p).sqrt(h) + self.eps)


class RMSprop(Optimizer):
    """RMSprop: ``h = decay*h + (1 - decay)*g*g; p -= lr * g / (sqrt(h) + eps)``.

    The book's defaults are ``lr=0.01, decay_rate=0.99``; Keras uses ``lr=0.001, rho=0.9``.
    """

    name = "rmsprop"
    _hyper = ("lr", "decay_rate", "eps")
    _slots = ("h",)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, eps: float = 1e-7) -> None:
        super().__init__(lr)
        if not 0.0 <= float(decay_rate) < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {decay_rate!r}")
        self.decay_rate = float(decay_rate)
        self.eps = float(eps)

    def _step(self, key: str, p: Any, g: Any) -> None:
        h = self._slot("h", key, p)
        h *= self.decay_rate
        h += (1 - self.decay_rate) * g * g
        p -= self.lr * g / (array_module(p).sqrt(h) + self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba), in the book's form with the bias correction folded into the step size:
    ``m += (1-b1)*(g - m); v += (1-b2)*(g*g - v); p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``."""

    name = "adam"
    _hyper = ("lr", "beta1", "beta2", "eps")
    _slots = ("m", "v")

    def __init__(
        self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7
    ) -> None:
        super().__init__(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)

    def _step(self, key: str, p: Any, g: Any) -> None:
        t = self.iter
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        m = self._slot("m", key, p)
        v = self._slot("v", key, p)
        m += (1 - self.beta1) * (g - m)
        v += (1 - self.beta2) * (g * g - v)
        p -= lr_t * m / (array_module(p).sqrt(v) + self.eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
}


def make_optimizer(name: str | Optimizer, lr: float | None = None, **kwargs: Any) -> Optimizer:
    """An optimizer by name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``),
    with the class defaults unless ``lr`` / ``kwargs`` are given. An Optimizer instance is returned as is."""
    if isinstance(name, Optimizer):
        return name
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    cls = OPTIMIZERS[name.lower()]
    if lr is not None:
        kwargs["lr"] = lr
    return cls(**kwargs)
