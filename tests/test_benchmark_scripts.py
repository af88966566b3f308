"""The measurement scripts under benchmarks/ run end to end (smallest settings, fresh processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
START, END = "<!-- fastconv-bench:start -->", "<!-- fastconv-bench:end -->"


def _run(script: str, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == status, done.stderr
    return done


def _bench_run(path: Path) -> Path:
    """A small `fastconv bench --json` document, written by hand (no measuring)."""
    rows = [
        {
            "dtype": "float32",
            "shape": "S2",
            "what": "x(64,1,28,28)",
            "peer": peer,
            "phase": phase,
            "median_ms": ms,
            "min_ms": ms,
        }
        for peer, ms in (("numpy", 2.0), ("numba", 1.0))
        for phase in ("forward", "backward")
    ]
    doc = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "fastconv bench --shapes S2",
        "settings": {"warmup": 2, "repeat": 7, "min_time": 0.02},
        "threads": 2,
        "machine": {"cpu": "cpu", "cores": 2, "gpu": "none", "blas": "openblas", "versions": {"numpy": "2"}},
        "results": rows,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
def test_startup_script_reports_import_overhead_and_warm_first_use():
    out = _run("startup.py", "--repeat", "1", "--cold", "0").stdout
    assert "over numpy" in out
    assert "numba imported by import fastconv: False; cupy: False" in out
    assert "warm first use (no scipy):" in out


def test_pool_backward_floor_script_times_every_pool_case():
    pytest.importorskip("numba")
    out = _run("pool_backward_floor.py", "--repeat", "1", "--threads", "1").stdout
    for case in ("P1", "P2", "P3"):
        assert f"{case} (" in out and "numba" in out and "floor" in out


def test_chunk_bytes_script_times_each_chunk_size():
    pytest.importorskip("numba")
    out = _run("numba_chunk_bytes.py", "--repeat", "1", "--threads", "1", "--shapes", "S2").stdout
    assert out.startswith("S2 forward + backward: 4 MiB") and "whole batch" in out


def test_benchmarks_md_script_replaces_only_the_text_between_the_markers(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Prose\nkept\n{START}\nold table\n{END}\nafter\n")
    _run("write_benchmarks_md.py", str(_bench_run(tmp_path / "r.json")), "--out", str(doc))
    text = doc.read_text()
    assert text.startswith(f"# Prose\nkept\n{START}\n2026-01-01T00:00:00+00:00 | cpu, 2 cores")
    assert text.endswith(f"\n{END}\nafter\n") and "old table" not in text
    assert "| S2 | x(64,1,28,28) | 2 (2.00x) | **1 (1.00x)** |" in text
    assert "`fastconv bench --shapes S2`" in text


def test_benchmarks_md_script_creates_a_missing_file_with_the_markers(tmp_path):
    fresh = tmp_path / "fresh.md"
    _run("write_benchmarks_md.py", str(_bench_run(tmp_path / "r.json")), "--out", str(fresh), "--stat", "min")
    text = fresh.read_text()
    assert text.startswith(f"{START}\n") and text.endswith(f"{END}\n")
    assert "float32, forward: min ms (ratio to the fastest)" in text


def test_benchmarks_md_script_leaves_a_file_without_markers_alone(tmp_path):
    prose = tmp_path / "notes.md"
    prose.write_text("# Only prose\n")
    done = _run("write_benchmarks_md.py", str(_bench_run(tmp_path / "r.json")), "--out", str(prose), status=2)
    assert "add the two marker lines" in done.stderr
    assert prose.read_text() == "# Only prose\n"


MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_peak_memory_script_measures_each_candidate_in_its_own_process(tmp_path):
    pytest.importorskip("numba")
    out_json = tmp_path / "mem.json"
    args = ("--shapes", "S2", "--threads", "1", "--algorithms", "gemm,winograd", "--json", str(out_json))
    out = _run("peak_memory.py", *args).stdout
    assert (
        "| shape | case | candidate | algorithm | peak | outputs (y, dx, dW, db) | extra (workspace) |" in out
    )
    assert "`python benchmarks/peak_memory.py --shapes S2" in out
    rows = json.loads(out_json.read_text())
    measured = [r for r in rows if "peak_mib" in r]
    assert measured, rows
    for r in measured:  # y (64,32,26,26) + dx (64,1,28,28) + dW + db in float32: about 5.5 MiB
        assert 5.3 < r["outputs_mib"] < 5.7 and r["peak_mib"] >= r["outputs_mib"] * 0.9, r


def test_keras_epoch_script_times_both_sides_on_real_mnist():
    import importlib.util

    if importlib.util.find_spec("keras") is None:  # not importorskip: Keras needs KERAS_BACKEND first
        pytest.skip("keras is not installed")
    pytest.importorskip("torch")
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST test set at {MNIST}")
    args = ("--data", str(MNIST), "--limit", "256", "--epochs", "1", "--warmup", "0", "--threads", "1")
    out = _run("keras_epoch.py", *args).stdout
    assert "| side | s per epoch (median) | ratio (median) |" in out
    assert "| fastconv " in out and "| Keras " in out and "`python benchmarks/keras_epoch.py --data" in out


def test_nhwc_route_script_compares_both_variants():
    pytest.importorskip("numba")
    out = _run("nhwc_route.py", "--rounds", "1", "--threads", "1", "--shapes", "S3").stdout
    assert "S3 nhwc copies" in out and "S3 nchw" in out and "backward" in out


def test_relu_masking_script_times_the_three_ways():
    out = _run("relu_masking.py").stdout
    assert "np.where" in out and "boolean-index" in out and "bit arithmetic" in out


def test_pooling_script_times_a_case_against_torch():
    pytest.importorskip("numba")
    pytest.importorskip("torch")
    out = _run("pooling_vs_torch.py", "--cases", "A1", "--repeat", "1", "--threads", "1").stdout
    assert "A1" in out


def test_conv_family_script_times_a_depthwise_case_against_torch():
    pytest.importorskip("numba")
    pytest.importorskip("torch")
    out = _run(
        "conv_family_vs_torch.py", "--only", "depthwise 3x3 s1", "--repeat", "1", "--threads", "1"
    ).stdout
    assert "depthwise 3x3 s1" in out and "torch nchw" in out


def test_direct_few_channels_script_times_both_algorithms():
    pytest.importorskip("numba")
    out = _run("direct_few_channels.py", "--quick").stdout
    assert "| gemm | direct | auto picks |" in out
    assert out.count("| (2, 3,") == 2
