"""Process-wide settings (:func:`configure`) and the per-user cache directory.

Settings are read by the kernels at call time, so a change applies to the next call::

    fastconv.configure(threads=2)                      # from now on
    with fastconv.configure(gemm_threads="split"):     # inside the block only
        ...

Nothing here imports numba or CuPy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Settings", "cache_dir", "configure", "get_config", "settings"]

CACHE_ENV = "FASTCONV_CACHE_DIR"
GEMM_THREADS = ("blas", "split")


@dataclass
class Settings:
    """The current settings; see :func:`configure` for what each one means."""

    threads: int | None = None
    gemm_threads: str = "blas"
    algorithm: str = "auto"
    autotune: bool = field(default_factory=lambda: os.environ.get("FASTCONV_AUTOTUNE", "") not in ("", "0"))


settings = Settings()
_lock = threading.Lock()


def get_config() -> dict[str, Any]:
    """The current settings as a dict (``threads`` is None until :func:`configure` sets it)."""
    return asdict(settings)


class _Configured:
    """What :func:`configure` returns: already applied; as a context manager it restores the
    previous settings on exit (thread counts included, as they were before)."""

    def __init__(self, previous: dict[str, Any], undo: list[Callable[[], None]]) -> None:
        self._previous = previous
        self._undo = undo

    def __enter__(self) -> _Configured:
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            for undo in reversed(self._undo):
                undo()
            for key, value in self._previous.items():
                setattr(settings, key, value)

    def __repr__(self) -> str:
        return f"fastconv.configure({', '.join(f'{k}={v!r}' for k, v in get_config().items())})"


def configure(
    *,
    threads: int | None = None,
    gemm_threads: str | None = None,
    algorithm: str | None = None,
    autotune: bool | None = None,
) -> _Configured:
    """Set process-wide options; only the ones given change. Returns a handle that, used as a
    context manager, restores the previous options on exit.

    threads: CPU threads for the numba backend's kernels and for BLAS (the GEMMs) together; by
        default ``NUMBA_NUM_THREADS`` (numba's default: the cores this process may use).
    gemm_threads: ``"blas"`` (default): each GEMM of the numba backend is one BLAS call threaded by
        BLAS. ``"split"``: one single-threaded BLAS call per thread on its share of the work, which
        suffers less when other busy processes share the cores (OpenBLAS's threads wait for each
        other, so one preempted thread stalls the whole call).
    algorithm: the convolution algorithm every call prefers, ``"auto"`` (default: the backend's
        measured rules), ``"gemm"``, ``"winograd"``, ``"winograd2"`` or ``"direct"``; shapes it cannot
        run take "auto". An ``algorithm=`` given to a call or a layer wins over this setting.
    autotune: with ``"auto"``, time every candidate algorithm on the first call of each shape and keep
        the fastest (in memory and in the per-user cache), like ``torch.backends.cudnn.benchmark``.
        Starts as ``FASTCONV_AUTOTUNE`` says (``1`` turns it on).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if gemm_threads is not None and gemm_threads not in GEMM_THREADS:
        raise ValueError(
            f"gemm_threads must be one of {', '.join(map(repr, GEMM_THREADS))}, got {gemm_threads!r}"
        )
    if algorithm is not None:
        from fastconv._algorithms import check_name

        check_name(algorithm)
    if autotune is not None and not isinstance(autotune, bool):
        raise ValueError(f"autotune must be True or False, got {autotune!r}")
    with _lock:
        previous = get_config()
        undo = []
        if threads is not None:
            undo = _apply_threads(threads)
            settings.threads = threads
        if gemm_threads is not None:
            settings.gemm_threads = gemm_threads
        if algorithm is not None:
            settings.algorithm = algorithm
        if autotune is not None:
            settings.autotune = autotune
    return _Configured(previous, undo)


def _apply_threads(n: int) -> list[Callable[[], None]]:
    """Set BLAS's threads to ``n`` (the numba backend reads ``settings.threads`` at each call);
    returns what undoes it."""
    from threadpoolctl import threadpool_limits

    return [threadpool_limits(limits=n, user_api="blas").restore_original_limits]


def cache_dir() -> Path:
    """fastconv's per-user cache directory: ``$FASTCONV_CACHE_DIR``, else the platform's user cache
    directory (``~/.cache/fastconv`` on Linux, honouring ``XDG_CACHE_HOME``). Not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("fastconv", appauthor=False)


def blas_description() -> str:
    """The BLAS libraries NumPy loaded, with their versions and thread counts, for ``fastconv info``."""
    from threadpoolctl import threadpool_info

    blas = [
        f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return "; ".join(blas) or "none loaded"
