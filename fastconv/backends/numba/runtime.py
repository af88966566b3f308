"""What the numba backend sets up around its kernels: cache directory, threads, the compile notice.

Imported by the package before :mod:`fastconv.backends.numba.kernels`, because the cache directory
is read when the kernels are defined:

* **Cache**: compiled kernels go to a per-user cache, ``<fastconv cache>/numba/fastconv-<v>-numba-<v>``
  (see :func:`fastconv._config.cache_dir`), never into the installed package: a ``__pycache__``
  written there outlives an uninstall and breaks a later editable install, and a read-only or shared
  site-packages cannot hold it. ``NUMBA_CACHE_DIR`` still wins.
* **Threads**: the kernels are serial ``nogil`` functions over a share of their work items;
  :func:`parallel_for` runs the shares on a small thread pool of fastconv's own. numba's
  ``parallel=True`` kernels cost 2-3x more to compile (20.7 s against 7.9 s for the four kernels in
  float32 and float64, measured here), need a threading layer (OpenMP's spin-waiting threads fight
  the BLAS threads for the cores; workqueue aborts the process on concurrent launches), and cannot
  run a BLAS call inside a share, which the Winograd kernels do.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba

from fastconv import _config


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _choose_cache_dir() -> str:
    """The kernel cache directory: NUMBA_CACHE_DIR, else fastconv's per-user cache, else a
    per-user temporary directory when that one cannot be written."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    from fastconv import __version__

    leaf = f"fastconv-{__version__}-numba-{numba.__version__}"
    path = _config.cache_dir() / "numba" / leaf
    if not _writable(path):
        user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
        fallback = Path(tempfile.gettempdir()) / f"fastconv-{user}" / leaf
        warnings.warn(
            f"fastconv: cannot write the kernel cache {path}; using {fallback} "
            f"(set {_config.CACHE_ENV} or NUMBA_CACHE_DIR to a writable directory)",
            RuntimeWarning,
            stacklevel=2,
        )
        _writable(fallback)
        path = fallback
    return str(path)


CACHE_DIR = _choose_cache_dir()


_decorating = threading.Lock()


def cached_njit(**flags: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **flags)`` caching in :data:`CACHE_DIR`: numba reads its cache
    directory when the decorator runs, so it is set for that moment only (under a lock), and other
    numba code in the process keeps its own cache."""

    def decorate(fn: Callable[..., Any]) -> Any:
        with _decorating:
            old = numba.config.CACHE_DIR
            numba.config.CACHE_DIR = CACHE_DIR
            try:
                return numba.njit(cache=True, **flags)(fn)
            finally:
                numba.config.CACHE_DIR = old

    return decorate


# ----------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------


def num_threads() -> int:
    """Threads for the kernels: ``fastconv.configure(threads=)``, else ``NUMBA_NUM_THREADS`` (numba's
    default: the cores this process may use)."""
    return _config.settings.threads or numba.config.NUMBA_NUM_THREADS


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_pool = threading.local()


def _mark_worker() -> None:
    _in_pool.worker = True


def _workers(n: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``n`` threads (grown by replacing it: running shares finish)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            old, _pool = (
                _pool,
                ThreadPoolExecutor(
                    max_workers=n, thread_name_prefix="fastconv-numba", initializer=_mark_worker
                ),
            )
            if old is not None:
                old.shutdown(wait=False)
        return _pool


# Shares per thread: more than one, so that a thread the VM pauses (or a slower share) holds up the
# others by one small share at most; the threads take the next share as they finish one.
SHARES_PER_THREAD = 4


def parallel_for(
    kernel: Callable[..., Any],
    total: int,
    *args: Any,
    threads: int | None = None,
    per_thread: int = SHARES_PER_THREAD,
) -> list[Any]:
    """Run ``kernel(t0, t1, *args)`` over ``[0, total)`` in contiguous shares and return the shares'
    results in share order. The shares (``per_thread`` per thread, fixed by ``total`` and the thread
    count) go to whichever thread is free next, the calling thread included; results do not depend
    on which thread ran a share. A call from inside a share runs serially (a pool thread waiting on
    the pool could deadlock it). Kernels that return a large partial result per share (a partial
    gradient) pass ``per_thread=1``."""
    n = min(threads or num_threads(), total)
    if n <= 1 or getattr(_in_pool, "worker", False):
        return [kernel(0, total, *args)]
    k = min(total, n * max(1, per_thread))
    cuts = [total * i // k for i in range(k + 1)]
    results: list[Any] = [None] * k
    taken = itertools.count()  # next() on it is atomic: each share is taken once
    failed: list[BaseException] = []

    def drain() -> None:
        while True:
            i = next(taken)
            if i >= k or failed:
                return
            try:
                results[i] = kernel(cuts[i], cuts[i + 1], *args)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller below
                failed.append(exc)
                return

    futures = [_workers(n - 1).submit(drain) for _ in range(n - 1)]
    drain()
    for f in futures:  # every share finishes before the caller sees its arrays (or an error)
        f.result()
    if failed:
        raise failed[0]
    return results


class _SingleThreadedBlas:
    """BLAS limited to one thread while any caller is inside; the limit is set by the first caller
    to enter and lifted by the last to leave, so calls from several Python threads at once never
    leave BLAS at one thread for the rest of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limiter: Any = None
        self._controller: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                if self._controller is None:  # finding the loaded libraries costs 0.6 ms: once
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._limiter = self._controller.select(user_api="blas").limit(limits=1)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


single_threaded_blas = _SingleThreadedBlas()


# ----------------------------------------------------------------------------------------------
# the compile notice
# ----------------------------------------------------------------------------------------------

# A kernel's first call per dtype that takes longer than this is compiling (a cache load takes a
# fraction of it): a note on stderr then says so, once per process, instead of a silent wait.
COMPILE_NOTICE_S = 1.0
announce = True  # False while warmup compiles on purpose (it says so itself)


_first_calls: set[tuple[str, str]] = set()


@contextlib.contextmanager
def compile_notice(key: str, dtype: str) -> Iterator[None]:
    """Around the first call of ``key`` per dtype: if it takes longer than :data:`COMPILE_NOTICE_S`
    (numba is compiling; a cache load takes a fraction of it), say so on stderr, once per process."""
    if (key, dtype) in _first_calls or not announce:
        yield
        return
    timer = threading.Timer(COMPILE_NOTICE_S, _say_compiling, (dtype,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        _first_calls.add((key, dtype))


class Announced:
    """A numba kernel over work items ``[t0, t1)``, called as ``kernel(total, *args)`` and run by
    :func:`parallel_for` (its shares' results come back as a list), inside :func:`compile_notice`."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __call__(self, total: int, *args: Any) -> list[Any]:
        dtype = args[0].dtype.name  # every kernel's first array argument has the compute dtype
        with compile_notice(self.kernel.__name__, dtype):
            return parallel_for(self.kernel, total, *args)


def _say_compiling(dtype: str) -> None:
    global announce
    if announce:
        announce = False
        print(
            f"fastconv: numba is compiling the numba backend's kernels for {dtype}: once per machine, "
            f"a few seconds per kernel, then loaded from the cache in {CACHE_DIR}; "
            "`fastconv warmup` compiles them all ahead of time",
            file=sys.stderr,
            flush=True,
        )
