"""Backend registry and selection.

How a backend is chosen, first match wins:

=====  ==========================================  ===================================
order  where                                       example
=====  ==========================================  ===================================
1      ``backend=`` on the call                    ``fastconv.conv2d(x, W, backend="numba")``
2      ``backend=`` on the layer                   ``Convolution(W, b, backend="numpy")``
3      the innermost ``use_backend`` context       ``with fastconv.use_backend("numba"):``
4      ``set_backend`` (process default)           ``fastconv.set_backend("numpy")``
5      environment variable ``FASTCONV_BACKEND``   ``FASTCONV_BACKEND=cupy,numba,numpy``
6      ``auto``                                    CuPy array -> cupy; NumPy array -> numba, else numpy
=====  ==========================================  ===================================

A single name is strict: if that backend is unavailable, the call fails and says why.
A comma list takes the first available backend. There is no silent fallback.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from fastconv._arrays import is_cupy
from fastconv.backends import BUILTIN, missing_attributes

ENV_VAR = "FASTCONV_BACKEND"
ENTRY_POINT_GROUP = "fastconv.backends"


class BackendUnavailableError(RuntimeError):
    """A backend that is known but cannot be used here (not installed, no device, ...)."""


class _Entry:
    """One registered backend: where to load it from, and the cached outcome of probing it."""

    __slots__ = ("name", "target", "install_hint", "loaded", "reason", "probed", "missing")

    def __init__(self, name: str, target: Any, install_hint: str = "") -> None:
        self.name = name
        self.target = target  # an import string, an entry point, or the backend object itself
        self.install_hint = install_hint
        self.loaded: Any = None
        self.reason: str | None = None  # why unusable; None when usable
        self.probed = False
        self.missing = False  # unusable because an import failed: the install hint applies


_lock = threading.RLock()
_entries: dict[str, _Entry] = {}
_entry_points_loaded = False
_default: str | None = None  # set_backend
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastconv_backend", default=None)

for _name, (_target, _hint) in BUILTIN.items():
    _entries[_name] = _Entry(_name, _target, _hint)


def _load_entry_points() -> None:
    """Register third-party backends from the ``fastconv.backends`` entry-point group (once, lazily)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in _entries:
                # Resolved on first use, like the built-ins: a broken plug-in cannot break the others.
                _entries[ep.name] = _Entry(
                    ep.name, ep, f"check the package that provides entry point {ep.value!r}"
                )


def _check_contract(name: str, backend: Any) -> None:
    missing = missing_attributes(backend)
    if missing:
        raise TypeError(
            f"backend {name!r} does not implement the fastconv backend contract: missing {', '.join(missing)} "
            "(see fastconv.backends for the contract)"
        )


def register_backend(name: str, backend: Any, *, install_hint: str = "", replace: bool = False) -> None:
    """Register a backend under ``name``.

    ``backend`` is an object (often a module) implementing the contract in
    :mod:`fastconv.backends`, or an import string ``"package.module"`` loaded on first use.
    Re-registering an existing name needs ``replace=True``.
    """
    if not isinstance(name, str) or not name or "," in name or name.strip() != name or name == "auto":
        raise ValueError(f"backend name must be a non-empty string without commas, not 'auto'; got {name!r}")
    if not isinstance(backend, str):
        _check_contract(name, backend)
    with _lock:
        _load_entry_points()
        if name in _entries and not replace:
            raise ValueError(
                f"a backend named {name!r} is already registered; pass replace=True to replace it"
            )
        _entries[name] = _Entry(name, backend, install_hint)


def unregister_backend(name: str) -> None:
    """Remove a backend registered with :func:`register_backend` (built-ins cannot be removed)."""
    if name in BUILTIN:
        raise ValueError(f"built-in backend {name!r} cannot be unregistered")
    with _lock:
        _entries.pop(name, None)


def _probe(entry: _Entry) -> None:
    """Load and probe a backend once; the outcome (usable or why not) is cached."""
    if entry.probed:
        return
    with _lock:
        if entry.probed:
            return
        try:
            target = entry.target
            if isinstance(target, str):
                backend = importlib.import_module(target)
            elif hasattr(target, "load") and hasattr(target, "group"):  # an importlib.metadata.EntryPoint
                backend = target.load()
            else:
                backend = target
            _check_contract(entry.name, backend)
            probe = getattr(backend, "probe", None)
            entry.reason = probe() if probe is not None else None
            entry.loaded = backend if entry.reason is None else None
        except ImportError as exc:
            entry.reason = f"cannot import it ({exc})"
            entry.missing = True
        except Exception as exc:  # a broken install must become a reason, not a crash at selection
            entry.reason = f"{type(exc).__name__}: {exc}"
        entry.probed = True


def known_backends() -> list[str]:
    """Names of every registered backend, available or not."""
    _load_entry_points()
    return list(_entries)


def list_backends() -> dict[str, dict[str, Any]]:
    """Each backend's availability: ``{name: {"available": bool, "reason": str | None}}``."""
    _load_entry_points()
    out = {}
    for name, entry in list(_entries.items()):
        _probe(entry)
        out[name] = {"available": entry.reason is None, "reason": _explain(entry)}
    return out


def _validate_spec(spec: str, source: str) -> list[str]:
    if not isinstance(spec, str):
        raise TypeError(
            f"backend from {source} must be a string such as 'numpy' or 'cupy,numba,numpy', got {spec!r}"
        )
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError(f"backend from {source} is empty; known backends: {', '.join(known_backends())}")
    if any(name != "auto" and name not in _entries for name in names):
        _load_entry_points()  # scans every installed distribution (slow): only for names not yet known
    for name in names:
        if name != "auto" and name not in _entries:
            raise ValueError(
                f"unknown backend {name!r} (from {source}); known backends: {', '.join(known_backends())}, or 'auto'"
            )
    return names


def _explain(entry: _Entry) -> str | None:
    """Why a probed backend is unusable, with the install hint when something is not installed."""
    if entry.reason is None:
        return None
    if entry.missing and entry.install_hint:
        return f"{entry.reason}; {entry.install_hint}"
    return entry.reason


def _get_loaded(name: str, source: str) -> Any:
    entry = _entries[name]
    _probe(entry)
    if entry.reason is not None:
        raise BackendUnavailableError(f"backend {name!r} (from {source}) is unavailable: {_explain(entry)}")
    return entry.loaded


def _is_available(name: str) -> bool:
    entry = _entries[name]
    _probe(entry)
    return entry.reason is None


def _auto(x: Any) -> Any:
    """Dispatch by array type: CuPy arrays go to cupy, anything else to numba when usable, else numpy."""
    if x is not None and is_cupy(x):
        return _get_loaded("cupy", "auto: the input is a CuPy array")
    if _is_available("numba"):
        return _entries["numba"].loaded
    return _get_loaded("numpy", "auto")


def _resolve(spec: str, source: str, x: Any) -> Any:
    names = _validate_spec(spec, source)
    if len(names) == 1:
        return _auto(x) if names[0] == "auto" else _get_loaded(names[0], source)
    for name in names:
        if name == "auto":
            return _auto(x)
        if _is_available(name):
            return _entries[name].loaded
    reasons = "; ".join(f"{n}: {_explain(_entries[n])}" for n in names)
    raise BackendUnavailableError(f"none of the backends {spec!r} (from {source}) is available ({reasons})")


def select(call: str | None = None, layer: str | None = None, x: Any = None) -> Any:
    """The backend object for one call, applying the precedence table of this module."""
    if call is not None:
        return _resolve(call, "backend= on the call", x)
    if layer is not None:
        return _resolve(layer, "backend= on the layer", x)
    ctx = _context.get()
    if ctx is not None:
        return _resolve(ctx, "use_backend()", x)
    if _default is not None:
        return _resolve(_default, "set_backend()", x)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _resolve(env, f"environment variable {ENV_VAR}={env!r}", x)
    return _auto(x)


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` returns to the environment / auto)."""
    global _default
    if name is not None:
        _validate_spec(name, "set_backend()")
    _default = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` inside a ``with`` block (per thread and per asyncio task, via contextvars)."""
    _validate_spec(name, "use_backend()")
    token = _context.set(name)
    try:
        yield
    finally:
        _context.reset(token)


def get_backend(x: Any = None) -> str:
    """Name of the backend a call would use now (for array ``x``, when given)."""
    return select(x=x).name


def get_backend_object(name: str | None = None) -> Any:
    """The backend object (usually a module) registered as ``name``, loaded; with no name, the one a
    call on a NumPy array would use now. Raises BackendUnavailableError when it is unusable here.

    Its kernels take the contract's clean arguments (see :mod:`fastconv.backends`); user code
    normally calls the checked functional API instead.
    """
    if name is None:
        return select()
    _validate_spec(name, "get_backend_object()")
    if "," in name or name == "auto":
        return _resolve(name, "get_backend_object()", None)
    return _get_loaded(name, "get_backend_object()")


def reset_probes() -> None:
    """Forget cached probe results (for tests that change the environment)."""
    with _lock:
        for entry in _entries.values():
            if isinstance(entry.target, str) or hasattr(entry.target, "load"):
                entry.loaded = None
            entry.probed = False
            entry.reason = None
            entry.missing = False
