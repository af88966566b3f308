"""Nothing is written inside the installed package at run time.

numba's own default puts compiled kernels in ``__pycache__`` beside the source: inside site-packages,
where a later uninstall leaves the folder behind (it then shadows an editable install as a namespace
package) and where a read-only or shared install cannot hold it. fastconv keeps them in a per-user
cache keyed by the fastconv and numba versions; ``NUMBA_CACHE_DIR`` still wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastconv

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(fastconv.__file__).resolve().parent
# Compiles (or loads) the max-pool kernels only: a few seconds on a cold cache.
POOL = (
    "import numpy as np, fastconv\n"
    "from fastconv.backends.numba import runtime\n"
    "x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)\n"
    "fastconv.max_pool2d(x, 2, backend='numba')\n"
    "print(runtime.CACHE_DIR)\n"
)


def _files(root: Path) -> set[str]:
    """Every file under ``root`` but Python sources, as relative paths (a run must add none)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".py"}


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    kept = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTCONV_CACHE_DIR")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**kept, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_compiled_kernels_go_to_the_per_user_cache_and_never_into_the_package(tmp_path):
    before = _files(PACKAGE)
    done = _run(POOL, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert done.returncode == 0, done.stderr
    cache = Path(done.stdout.split()[-1])
    assert cache.is_relative_to(tmp_path / "xdg" / "fastconv" / "numba")
    assert cache.name == f"fastconv-{fastconv.__version__}-numba-{__import__('numba').__version__}"
    assert any(cache.rglob("*.nbi")), "no kernel was cached"
    assert _files(PACKAGE) - before == set(), "written inside the package"


@pytest.mark.slow
def test_an_unwritable_cache_falls_back_to_a_temporary_directory_and_says_so(tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    (tmp_path / "tmp").mkdir()
    before = _files(PACKAGE)
    done = _run(POOL, FASTCONV_CACHE_DIR=str(blocked), TMPDIR=str(tmp_path / "tmp"))
    assert done.returncode == 0, done.stderr
    assert "cannot write the kernel cache" in done.stderr and "FASTCONV_CACHE_DIR" in done.stderr
    cache = Path(done.stdout.split()[-1])
    assert cache.is_relative_to(tmp_path / "tmp") and any(cache.rglob("*.nbi"))
    assert _files(PACKAGE) - before == set(), "written inside the package"


def test_numba_cache_dir_set_by_the_user_wins(tmp_path):
    done = _run(
        "from fastconv.backends.numba import runtime; print(runtime.CACHE_DIR)", NUMBA_CACHE_DIR=str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(tmp_path)
