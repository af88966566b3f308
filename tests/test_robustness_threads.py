"""Calls from several threads, and process state that must not leak.

* 4 threads x 50 mixed calls give, bit for bit, the single-threaded results, on every backend;
* ``gemm_threads="split"`` from several threads leaves BLAS's thread count as it found it;
* fastconv's kernels never start numba's own thread pool, so other code's numba parallel loops keep
  whatever threading layer they choose (OpenMP included) and fastconv runs beside them;
* no memory growth over 200 repeated calls.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from mixed_calls import calls, run_threads

import fastconv

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(code: str, drop: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    kept = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**kept, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _blas_threads() -> dict[str, int]:
    """Thread count of every BLAS library loaded, by file."""
    from threadpoolctl import threadpool_info

    return {p["filepath"]: p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.parametrize("gemm_threads", ["blas", "split"])
def test_four_threads_of_fifty_mixed_calls_match_single_threaded_results_bit_for_bit(backend, gemm_threads):
    before = _blas_threads()
    with fastconv.configure(gemm_threads=gemm_threads):
        differs, errors = run_threads(backend)
    assert errors == [] and differs == []
    # split GEMMs limit BLAS to one thread while any call is inside: the last one out lifts the limit
    after = _blas_threads()
    assert {k: after[k] for k in before} == before


def test_fastconv_starts_no_numba_thread_pool_and_runs_beside_one_on_any_layer():
    """The kernels are serial nogil functions on fastconv's own threads: numba's pool (and its
    threading layer) stays the business of the code that starts it."""
    pytest.importorskip("numba")
    code = (
        "import json, sys, numba, numpy as np\n"
        "from numba.np.ufunc import parallel\n"
        "sys.path.insert(0, 'tests')\n"
        "from mixed_calls import run_threads\n"
        "import fastconv\n"
        "fastconv.conv2d(np.ones((2, 2, 5, 5)), np.ones((2, 2, 3, 3)), backend='numba')\n"
        "started = bool(getattr(parallel, '_is_initialized', False))\n"
        "@numba.njit(parallel=True)\n"
        "def other(a):\n"
        "    for i in numba.prange(a.size):\n"
        "        a[i] += 1\n"
        "other(np.zeros(100))\n"
        "differs, errors = run_threads('numba')\n"
        "print(json.dumps([started, numba.threading_layer(), differs, errors]))\n"
    )
    for layer in ("workqueue", "omp"):
        done = _fresh_python(code, NUMBA_THREADING_LAYER=layer)
        if done.returncode != 0 and layer == "omp" and "OpenMP" in done.stderr:
            continue  # numba's OpenMP layer does not load here
        assert done.returncode == 0, done.stderr[-3000:]
        started, used, differs, errors = json.loads(done.stdout.splitlines()[-1])
        assert (started, used, differs, errors) == (False, layer, [], [])


# -- memory ---------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_two_hundred_repeated_calls_do_not_grow_memory(backend):
    table = calls(backend)
    names = sorted(table)

    def round_of_calls() -> None:
        for name in names:
            table[name]()

    for _ in range(10):  # warm: compiled kernels, caches, memory pools, allocator arenas
        round_of_calls()
    gc.collect()
    tracemalloc.start()
    start_traced, start_rss = tracemalloc.get_traced_memory()[0], _rss_bytes()
    for i in range(200):
        table[names[i % len(names)]]()
    for _ in range(10):
        round_of_calls()
    gc.collect()
    grown_traced = tracemalloc.get_traced_memory()[0] - start_traced
    tracemalloc.stop()
    grown_rss = _rss_bytes() - start_rss
    # NumPy reports its buffers to tracemalloc: nothing a call allocates may survive it
    assert grown_traced < 256 * 1024, (
        f"{grown_traced} bytes still allocated after 200 + {10 * len(names)} calls"
    )
    assert grown_rss < 32 * 1024 * 1024, f"resident memory grew by {grown_rss / 2**20:.1f} MiB"
