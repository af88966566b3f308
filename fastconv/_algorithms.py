"""Which convolution algorithm a call runs: the ``algorithm=`` argument, the process setting, the
backend's measured rules, and the opt-in autotuner.

Names (a backend implements a subset; :data:`GEMM` is every backend's)::

    "gemm"       im2col + GEMM forward; backward dW by GEMM over the same columns, dx by col2im
    "winograd"   Winograd F(4x4,3x3): 3x3 kernels, stride 1, dilation 1; forward, dx and dW
    "winograd2"  Winograd F(2x2,3x3): as accurate as "gemm", 2.25x fewer multiplies
    "direct"     forward: a direct kernel for few input channels; backward: dx as a direct (forward-style)
                 convolution of dout with the flipped filters, no col2im; dW by GEMM
    "auto"       the backend's rules (measured per shape and dtype), or the autotuner's choice

Resolution, for one call (:func:`resolve`):

1. ``algorithm=`` given to the call (or to the layer): that algorithm, or a ValueError naming why it
   cannot run this shape on this backend; never something else.
2. Else the process setting (``fastconv.configure(algorithm=...)``): a preference, used where it
   applies; shapes it cannot run take "auto" (:func:`fastconv.conv_algorithm` names what runs).
3. "auto": with autotuning on (``FASTCONV_AUTOTUNE=1`` or ``configure(autotune=True)``), the first
   call of each shape times every candidate on the call's own arrays and keeps the fastest, in memory
   and in ``<cache>/autotune/<backend>-<machine>.json``; otherwise the backend's ``choose_algorithm``.

The algorithms differ in rounding: each one's error bound is stated in README.md ("Convolution
algorithms") and held by the tests. Every algorithm is deterministic (same input, same thread count
-> same bits); autotuning makes the choice depend on a timing, so the first run of a shape may pick
differently on two machines, but a machine keeps its choice in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from fastconv._config import cache_dir, settings
from fastconv._shapes import Pad4, Pair

GEMM = "gemm"
ALGORITHMS = ("auto", "gemm", "winograd", "winograd2", "direct")
DIRECTIONS = ("forward", "backward")
AUTOTUNE_ENV = "FASTCONV_AUTOTUNE"


def check_name(algorithm: Any, what: str = "algorithm") -> str:
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")
    return algorithm


def implemented(impl: Any) -> tuple[str, ...]:
    """The algorithms a backend implements ("gemm" for one that declares none)."""
    return tuple(getattr(impl, "algorithms", (GEMM,)))


class Conv(NamedTuple):
    """One convolution call's geometry, as the algorithm layer sees it (``x_shape`` in ``layout``'s order)."""

    direction: str
    x_shape: tuple[int, ...]
    W_shape: tuple[int, ...]
    stride: Pair
    pad: Pad4
    dilation: Pair
    groups: int = 1
    layout: str = "NCHW"


def why_not(impl: Any, name: str, conv: Conv) -> str | None:
    """None when backend ``impl`` can run ``name`` on this convolution, else the reason."""
    if name not in implemented(impl):
        return (
            f"algorithm {name!r} is not implemented by backend {impl.name!r} "
            f"(it has {', '.join(map(repr, implemented(impl)))})"
        )
    support = getattr(impl, "algorithm_support", None)
    if support is None or name == GEMM:
        return None
    return support(name, *conv)


def _rules(impl: Any, conv: Conv, dtype: Any) -> str:
    choose = getattr(impl, "choose_algorithm", None)
    if choose is None:
        return GEMM
    c = conv
    return str(
        choose(c.direction, c.x_shape, c.W_shape, c.stride, c.pad, c.dilation, str(dtype), c.groups, c.layout)
    )


def resolve(
    impl: Any,
    requested: str | None,
    conv: Conv,
    dtype: Any,
    run: Callable[[str], Any] | None = None,
) -> str:
    """The algorithm this call runs (see the module docstring). ``run(name)`` runs the call with
    algorithm ``name``; the autotuner times it (without it, autotuning falls back to the rules)."""
    if requested is not None:
        name = check_name(requested)
        if name != "auto":
            reason = why_not(impl, name, conv)
            if reason:
                raise ValueError(f"algorithm={name!r} cannot run this {conv.direction} convolution: {reason}")
            return name
    elif settings.algorithm != "auto":
        if why_not(impl, settings.algorithm, conv) is None:
            return settings.algorithm
    if settings.autotune and len(implemented(impl)) > 1:
        return tuner.choose(impl, conv, dtype, run)
    return _rules(impl, conv, dtype)


# ----------------------------------------------------------------------------------------------
# autotuning
# ----------------------------------------------------------------------------------------------


def machine_key() -> str:
    """A short name of this machine's kind: the tuned choices hold for one CPU model and core count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    digest = hashlib.sha1(f"{cpu}|{os.cpu_count()}".encode()).hexdigest()[:10]
    return digest


class Tuner:
    """Times the candidate algorithms on the first call of each shape and remembers the fastest."""

    def __init__(self) -> None:
        self._choices: dict[str, str] = {}
        self._loaded: set[str] = set()
        self._lock = threading.RLock()

    def path(self, backend: str) -> Path:
        return cache_dir() / "autotune" / f"{backend}-{machine_key()}.json"

    @staticmethod
    def key(conv: Conv, dtype: Any, threads: str) -> str:
        c = conv
        extra = "" if (c.groups, c.layout) == (1, "NCHW") else f" g{c.groups} {c.layout}"
        return (
            f"{c.direction} x{tuple(c.x_shape)} W{tuple(c.W_shape)} s{tuple(c.stride)} p{tuple(c.pad)} "
            f"d{tuple(c.dilation)}{extra} {dtype} t{threads}"
        ).replace(" ", "")

    def _load(self, backend: str) -> None:
        if backend in self._loaded:
            return
        self._loaded.add(backend)
        try:
            data = json.loads(self.path(backend).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: tune again
            return
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(k, str) and v in ALGORITHMS and v != "auto":
                    self._choices[f"{backend}:{k}"] = v

    def _save(self, backend: str) -> None:
        from fastconv.train._io import atomic_write

        prefix = f"{backend}:"
        mine = {k[len(prefix) :]: v for k, v in self._choices.items() if k.startswith(prefix)}
        path = self.path(backend)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(json.dumps(mine, indent=1, sort_keys=True).encode()))
        except OSError:  # a read-only cache: the choice still holds for this process
            pass

    def cached(self, impl: Any, conv: Conv, dtype: Any) -> str | None:
        with self._lock:
            self._load(impl.name)
            return self._choices.get(f"{impl.name}:{self.key(conv, dtype, _threads())}")

    def choose(self, impl: Any, conv: Conv, dtype: Any, run: Callable[[str], Any] | None) -> str:
        with self._lock:
            hit = self.cached(impl, conv, dtype)
            if hit is not None and why_not(impl, hit, conv) is None:
                return hit
            if run is None:
                return _rules(impl, conv, dtype)
            candidates = [a for a in implemented(impl) if why_not(impl, a, conv) is None]
            best = min(candidates, key=lambda a: _time(run, a))
            self._choices[f"{impl.name}:{self.key(conv, dtype, _threads())}"] = best
            self._save(impl.name)
            return best

    def forget(self) -> None:
        """Drop the in-memory choices (the files stay; tests use this with a fresh cache directory)."""
        with self._lock:
            self._choices.clear()
            self._loaded.clear()


def _threads() -> str:
    """The thread setting a tuned choice holds for: the count, and how the GEMMs use the threads."""
    n = settings.threads or os.cpu_count() or 1
    return f"{n}" if settings.gemm_threads == "blas" else f"{n}{settings.gemm_threads}"


def _time(run: Callable[[str], Any], name: str, budget_s: float = 0.25) -> float:
    """Best of a few calls after one untimed call (which compiles or loads the kernels)."""
    run(name)
    best = float("inf")
    spent = 0.0
    for _ in range(5):
        t = time.perf_counter()
        run(name)
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        if spent > budget_s:
            break
    return best


tuner = Tuner()
