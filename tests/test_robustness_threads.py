"""Calls from several threads, and process state that must not leak.

* 4 threads x 50 mixed calls give, bit for bit, the single-threaded results, on every backend;
* on numba's ``workqueue`` layer, which aborts the process when two threads launch kernels at once,
  fastconv serialises the calls (checked in a child process);
* ``gemm_threads="split"`` from several threads leaves BLAS's thread count as it found it;
* numba's thread pool started by other code before fastconv's first kernel still avoids OpenMP,
  and one started before ``import fastconv`` is reported;
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
LAYER_ENV = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")


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


def test_numba_workqueue_layer_takes_calls_from_several_threads_one_at_a_time():
    """workqueue aborts the process ("Terminating: Nested parallel kernel launch detected") on two
    launches at once; fastconv holds a lock around kernels on that layer."""
    pytest.importorskip("numba")
    code = (
        "import json, sys, numba\n"
        "sys.path.insert(0, 'tests')\n"
        "from mixed_calls import run_threads\n"
        "differs, errors = run_threads('numba')\n"
        "print(json.dumps([numba.threading_layer(), differs, errors]))\n"
    )
    done = _fresh_python(code, NUMBA_THREADING_LAYER="workqueue")
    assert done.returncode == 0, done.stderr[-3000:]
    layer, differs, errors = json.loads(done.stdout.splitlines()[-1])
    assert (layer, differs, errors) == ("workqueue", [], [])


def _tbb_installed() -> bool:
    return sys.platform.startswith("linux") and any(
        os.path.exists(os.path.join(p, "lib", "libtbb.so.12")) for p in (sys.prefix, sys.base_prefix)
    )


def test_numba_pool_started_by_other_code_after_import_fastconv_is_not_openmp():
    pytest.importorskip("numba")
    code = (
        "import fastconv, numba, numpy as np\n"
        "numba.get_num_threads()  # starts numba's thread pool before any fastconv kernel\n"
        "fastconv.conv2d(np.ones((2, 2, 5, 5)), np.ones((2, 2, 3, 3)), backend='numba')\n"
        "print(numba.threading_layer())\n"
    )
    done = _fresh_python(code, drop=LAYER_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == ("tbb" if _tbb_installed() else "workqueue")


def test_numba_pool_started_before_import_fastconv_on_openmp_is_reported():
    pytest.importorskip("numba")
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import numba\n"
        "numba.config.THREADING_LAYER = 'omp'\n"
        "numba.get_num_threads()  # the pool starts on OpenMP before fastconv is imported\n"
        "import fastconv, numpy as np\n"
        "fastconv.conv2d(np.ones((2, 2, 5, 5)), np.ones((2, 2, 3, 3)), backend='numba')\n"
        "print(numba.threading_layer())\n"
    )
    done = _fresh_python(code, drop=LAYER_ENV)
    assert done.returncode == 0, done.stderr
    if done.stdout.split()[-1] != "omp":
        pytest.skip("numba's OpenMP layer does not load here")
    assert done.stderr.count("numba's thread pool runs on the OpenMP layer") == 1, done.stderr


def test_a_chosen_threading_layer_is_used_and_not_reported():
    pytest.importorskip("numba")
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import fastconv, numba, numpy as np\n"
        "fastconv.conv2d(np.ones((2, 2, 5, 5)), np.ones((2, 2, 3, 3)), backend='numba')\n"
        "print(numba.threading_layer())\n"
    )
    done = _fresh_python(code, NUMBA_THREADING_LAYER="workqueue")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "workqueue"


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
