"""Process-wide settings (:func:`configure`) and the per-user cache directory.

Settings are read by the kernels at call time, so a change applies to the next call::

    fastconv.configure(threads=2)                      # from now on
    with fastconv.configure(gemm_threads="split"):     # inside the block only
        ...

Nothing here imports numba or CuPy unless a setting needs it (``threads`` sets numba's threads
when numba is installed).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Settings", "cache_dir", "configure", "get_config", "settings"]

CACHE_ENV = "FASTCONV_CACHE_DIR"
GEMM_THREADS = ("blas", "split")
# numba's threading layers in fastconv's order: never OpenMP unless nothing else loads (see
# fastconv.backends.numba.runtime); workqueue always loads.
NUMBA_LAYER_PRIORITY = ("tbb", "workqueue", "omp")
_NUMBA_LAYER_ENV = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")


@dataclass
class Settings:
    """The current settings; see :func:`configure` for what each one means."""

    threads: int | None = None
    gemm_threads: str = "blas"


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


def configure(*, threads: int | None = None, gemm_threads: str | None = None) -> _Configured:
    """Set process-wide options; only the ones given change. Returns a handle that, used as a
    context manager, restores the previous options on exit.

    threads: CPU threads for numba's parallel loops and for BLAS (the GEMMs) together; at most
        ``NUMBA_NUM_THREADS`` (numba's pool is sized at start-up, by default to the core count).
        numba's count is per Python thread, as numba keeps it.
    gemm_threads: ``"blas"`` (default): each GEMM of the numba backend is one BLAS call threaded by
        BLAS. ``"split"``: one single-threaded BLAS call per thread on its share of the work, which
        suffers less when other busy processes share the cores (OpenBLAS's threads wait for each
        other, so one preempted thread stalls the whole call).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if gemm_threads is not None and gemm_threads not in GEMM_THREADS:
        raise ValueError(
            f"gemm_threads must be one of {', '.join(map(repr, GEMM_THREADS))}, got {gemm_threads!r}"
        )
    with _lock:
        previous = get_config()
        undo = []
        if threads is not None:
            undo = _apply_threads(threads)
            settings.threads = threads
        if gemm_threads is not None:
            settings.gemm_threads = gemm_threads
    return _Configured(previous, undo)


def _apply_threads(n: int) -> list[Callable[[], None]]:
    """Set numba's threads (when numba is installed) and BLAS's to ``n``; returns what undoes it."""
    import importlib.util

    undo = []
    if importlib.util.find_spec("numba") is not None:
        from fastconv.backends.numba import runtime

        undo.append(runtime.set_numba_threads(n))  # checks n against NUMBA_NUM_THREADS first
    from threadpoolctl import threadpool_limits

    undo.append(threadpool_limits(limits=n, user_api="blas").restore_original_limits)
    return undo


def cache_dir() -> Path:
    """fastconv's per-user cache directory: ``$FASTCONV_CACHE_DIR``, else the platform's user cache
    directory (``~/.cache/fastconv`` on Linux, honouring ``XDG_CACHE_HOME``). Not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("fastconv", appauthor=False)


def user_chose_numba_layer() -> bool:
    """True when the user set numba's threading layer or its priority in the environment."""
    return any(os.environ.get(var) for var in _NUMBA_LAYER_ENV) and not _layer_env_is_ours()


def _layer_env_is_ours() -> bool:
    return os.environ.get("NUMBA_THREADING_LAYER_PRIORITY") == _our_priority and not os.environ.get(
        "NUMBA_THREADING_LAYER"
    )


_our_priority = " ".join(NUMBA_LAYER_PRIORITY)


def preload_pip_tbb() -> None:
    """Load pip's ``libtbb.so.12`` by its full path, so that numba's tbb layer finds it.

    The ``tbb`` wheel puts the library in ``<prefix>/lib``, which is not on the loader's path in a
    virtual environment: numba would report the layer as missing. A library already loaded under the
    same soname satisfies numba's own load of it. Nothing happens where the wheel is not installed.
    """
    if not sys.platform.startswith("linux"):
        return
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(path):
            import ctypes

            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:  # a broken install: numba falls back to workqueue
                pass
            return


def prepare_numba_threading() -> None:
    """Make numba prefer tbb, then workqueue, then OpenMP, unless the user chose a layer.

    Called at ``import fastconv`` without importing numba: it loads pip's tbb library (see
    :func:`preload_pip_tbb`) and sets ``NUMBA_THREADING_LAYER_PRIORITY`` in the environment (numba
    reads it when imported, and again before each compilation), and, when numba is already imported
    and its pool not yet started, numba's configuration itself. So code that starts numba's thread
    pool before fastconv's first kernel still gets this order.
    """
    if user_chose_numba_layer():
        return
    preload_pip_tbb()
    os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = _our_priority
    numba = sys.modules.get("numba")
    config = getattr(numba, "config", None)
    if config is not None:
        parallel = sys.modules.get("numba.np.ufunc.parallel")
        if not getattr(parallel, "_is_initialized", False):
            config.THREADING_LAYER = "default"
            config.THREADING_LAYER_PRIORITY = list(NUMBA_LAYER_PRIORITY)


def blas_description() -> str:
    """The BLAS libraries NumPy loaded, with their versions and thread counts, for ``fastconv info``."""
    from threadpoolctl import threadpool_info

    blas = [
        f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return "; ".join(blas) or "none loaded"
