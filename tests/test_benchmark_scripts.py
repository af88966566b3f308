"""The measurement scripts under benchmarks/ run end to end (smallest settings, fresh processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_startup_script_reports_import_overhead_and_warm_first_use():
    out = _run("startup.py", "--repeat", "1", "--cold", "0")
    assert "over numpy" in out
    assert "numba imported by import fastconv: False; cupy: False" in out
    assert "warm first use (no scipy):" in out


def test_pool_backward_floor_script_times_every_pool_case():
    pytest.importorskip("numba")
    out = _run("pool_backward_floor.py", "--repeat", "1", "--threads", "1")
    for case in ("P1", "P2", "P3"):
        assert f"{case} (" in out and "numba" in out and "floor" in out


def test_chunk_bytes_script_times_each_chunk_size():
    pytest.importorskip("numba")
    out = _run("numba_chunk_bytes.py", "--repeat", "1", "--threads", "1", "--shapes", "S2")
    assert out.startswith("S2 forward + backward: 4 MiB") and "whole batch" in out
