"""What the numba backend sets up around its kernels: cache directory, threading layer, threads.

Imported by the package before :mod:`fastconv.backends.numba.kernels`, because both choices are
read when the kernels are defined (the cache directory) or first run (the threading layer):

* **Cache**: compiled kernels go to a per-user cache, ``<fastconv cache>/numba/fastconv-<v>-numba-<v>``
  (see :func:`fastconv._config.cache_dir`), never into the installed package: a ``__pycache__``
  written there outlives an uninstall and breaks a later editable install, and a read-only or shared
  site-packages cannot hold it. ``NUMBA_CACHE_DIR`` still wins.
* **Threading layer**: ``tbb`` when it loads, else ``workqueue``; OpenMP only when the user asks for
  it (``NUMBA_THREADING_LAYER`` / ``NUMBA_THREADING_LAYER_PRIORITY``). OpenMP's threads spin-wait
  after each loop and fight the BLAS threads of the GEMMs for the cores (BENCHMARKS.md). The
  ``workqueue`` layer must not run kernels from two Python threads at once (numba aborts the
  process), so :data:`kernel_lock` serialises calls there; ``tbb`` runs them concurrently.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastconv import _config

_config.prepare_numba_threading()  # before numba reads its configuration
_USER_CHOSE_LAYER = _config.user_chose_numba_layer()

import numba  # noqa: E402


def _pool_started() -> bool:
    from numba.np.ufunc import parallel

    return bool(getattr(parallel, "_is_initialized", False))


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

if not _USER_CHOSE_LAYER and not _pool_started():
    numba.config.THREADING_LAYER = "default"  # the first of the priority list that loads
    numba.config.THREADING_LAYER_PRIORITY = list(_config.NUMBA_LAYER_PRIORITY)


@contextlib.contextmanager
def kernel_cache() -> Iterator[None]:
    """numba's cache directory set to :data:`CACHE_DIR` while the kernels are defined: each
    ``cache=True`` decorator picks its cache location then, and keeps it."""
    old = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = CACHE_DIR
    try:
        yield
    finally:
        numba.config.CACHE_DIR = old


# ----------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------

# Serialises kernel calls until the first one shows which layer numba started; kept on workqueue
# (which aborts the process on launches from two threads at once), dropped on tbb and OpenMP.
kernel_lock: Any = threading.Lock()
_layer_checked = False
_layer_lock = threading.Lock()


def check_threading_layer() -> None:
    """After the first parallel kernel: pick the lock for the layer in use, and say so once when
    the pool was started (by other code, before fastconv) on a layer the user did not choose."""
    global kernel_lock, _layer_checked
    if _layer_checked:
        return
    with _layer_lock:
        if _layer_checked:
            return
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel loop has run yet (e.g. NUMBA_DISABLE_JIT)
            return
        if layer != "workqueue":
            kernel_lock = contextlib.nullcontext()
        if layer == "omp" and not _USER_CHOSE_LAYER:
            warnings.warn(
                "fastconv: numba's thread pool runs on the OpenMP layer because it was started before "
                "fastconv chose a layer (import fastconv before starting numba's threads, or set "
                "NUMBA_THREADING_LAYER=tbb or workqueue); OpenMP slows the GEMM-heavy layers down",
                RuntimeWarning,
                stacklevel=3,
            )
        _layer_checked = True


def set_numba_threads(n: int) -> Callable[[], None]:
    """Set numba's thread count for this Python thread (numba keeps it per thread) and return what
    restores the previous count; at most ``NUMBA_NUM_THREADS``, the size of numba's pool."""
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(
            f"threads must be at most NUMBA_NUM_THREADS={limit} (numba's pool size), got {n}; "
            f"set NUMBA_NUM_THREADS={n} before starting Python"
        )
    before = numba.get_num_threads()
    numba.set_num_threads(int(n))
    return lambda: numba.set_num_threads(before)


class _SingleThreadedBlas:
    """BLAS limited to one thread while any caller is inside; the limit is set by the first caller
    to enter and lifted by the last to leave, so calls from several Python threads at once never
    leave BLAS at one thread for the rest of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limiter: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                from threadpoolctl import ThreadpoolController

                self._limiter = ThreadpoolController().select(user_api="blas").limit(limits=1)
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


class Announced:
    """A numba kernel whose first call per dtype, if it takes longer than :data:`COMPILE_NOTICE_S`,
    says on stderr that numba is compiling; every call holds :data:`kernel_lock`."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._ready: set[str] = set()

    def __call__(self, *args: Any) -> Any:
        dtype = args[0].dtype.name  # every kernel's first argument has the compute dtype
        if dtype in self._ready or not announce:
            with kernel_lock:
                out = self.kernel(*args)
            check_threading_layer()
            return out
        timer = threading.Timer(COMPILE_NOTICE_S, _say_compiling, (dtype,))
        timer.daemon = True
        timer.start()
        try:
            with kernel_lock:
                out = self.kernel(*args)
        finally:
            timer.cancel()
            self._ready.add(dtype)
        check_threading_layer()
        return out


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
