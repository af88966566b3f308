"""`fastconv bench`: a quick run writes a table, JSON and a PNG; options are checked."""

from __future__ import annotations

import json

import pytest

from fastconv import bench
from fastconv.bench.cases import BY_NAME, CASES, conv_inputs, select
from fastconv.bench.report import render


@pytest.fixture
def threads_restored():
    """Puts numba's and every BLAS/OpenMP pool's thread count back after a test that runs `--threads`."""
    from threadpoolctl import threadpool_limits

    try:
        import numba
    except ImportError:
        numba = None
    numba_before = numba.get_num_threads() if numba else None
    with threadpool_limits(limits=None):  # restores each pool's count on exit
        yield
    if numba is not None:
        numba.set_num_threads(numba_before)


def test_quick_run_on_numpy_prints_table_and_writes_json_and_png(tmp_path, capsys, threads_restored):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = bench.main(
        [
            "--quick",
            "--backends",
            "numpy",
            "--no-torch",
            "--no-jax",
            "--shapes",
            "S2,P1",
            "--threads",
            "1",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "-q",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "float32, forward: median ms (ratio to the fastest)" in printed
    assert "float32, backward" in printed and "forward + backward" in printed
    assert "| S2 | x(64,1,28,28) W(32,1,3,3) s1 p0 | **" in printed
    assert "| P1 |" in printed

    doc = json.loads(out_json.read_text())
    assert doc["command"].startswith("fastconv bench --quick")
    assert doc["threads"] == 1
    assert doc["threads_applied"]["fastconv"] == 1 and doc["threads_applied"]["threadpoolctl"] == 1
    for key in ("cpu", "cores", "blas", "versions", "gpu"):
        assert key in doc["machine"]
    rows = {(r["shape"], r["phase"], r["peer"]): r for r in doc["results"]}
    assert set(rows) == {(s, p, "numpy") for s in ("S2", "P1") for p in ("forward", "backward")}
    assert all(r["median_ms"] > 0 for r in rows.values())

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size < 200_000


def test_earlier_run_is_rendered_again_from_its_json_without_measuring(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    assert (
        bench.main(
            ["--quick", "--backends", "numpy", "--no-torch", "--shapes", "P1", "--json", str(out_json), "-q"]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        bench.main(["--from-json", str(out_json), "--stat", "min", "--plot", str(tmp_path / "again.png")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "float32, forward: min ms (ratio to the fastest)" in printed
    assert "`fastconv bench --quick --backends numpy" in printed
    assert (tmp_path / "again.png").stat().st_size > 0


def test_training_step_case_runs_on_numpy(capsys):
    pytest.importorskip("fastconv.train.networks")
    assert (
        bench.main(["--quick", "--backends", "numpy", "--no-torch", "--no-jax", "--shapes", "T1", "-q"]) == 0
    )
    assert "| T1 | train step: SimpleConvNet, batch 100, adam | **" in capsys.readouterr().out


def test_torch_peer_is_timed_beside_numpy_when_installed(capsys):
    pytest.importorskip("torch")
    assert bench.main(["--quick", "--backends", "numpy", "--no-jax", "--shapes", "S2", "-q"]) == 0
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| shape")]
    assert header[0] == "| shape | case | numpy | torch |"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "S9"], "unknown shape 'S9'"),
        (["--dtype", "float16"], "need float32 or float64"),
        (["--backends", "nosuch"], "'nosuch' is not available"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--from-json", "/nonexistent/r.json"], "--from-json: cannot read '/nonexistent/r.json'"),
    ],
)
def test_bad_option_exits_with_a_message_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--no-torch", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_list_shapes_prints_every_case(capsys):
    assert bench.main(["--list-shapes"]) == 0
    printed = capsys.readouterr().out
    for case in CASES:
        assert case.name in printed


def test_shape_filter_keeps_the_order_given():
    assert [c.name for c in select("p1, s3,S1")] == ["P1", "S3", "S1"]
    assert len(select(None)) == len(CASES)


def test_benchmark_inputs_are_seeded_random_and_never_zero():
    a, b = conv_inputs(BY_NAME["S2"], "float32"), conv_inputs(BY_NAME["S2"], "float32")
    assert a["x"].dtype.name == "float32" and a["dout"].shape == (64, 32, 26, 26)
    assert (a["x"] == b["x"]).all() and (a["x"] != 0).mean() > 0.99


def test_measure_loops_short_calls_to_reach_min_time():
    calls = []
    result = bench.measure(
        lambda: calls.append(1), lambda: None, bench.Settings(warmup=1, repeat=3, min_time=0.001)
    )
    assert result["number"] > 1
    assert len(result["times_s"]) == 3
    assert len(calls) == 1 + 3 * result["number"]


def test_short_calls_get_one_untimed_call_before_each_interleaved_sample():
    calls = []

    class Counting(bench.Peer):
        def calls(self, case, dtype):
            return {"forward": lambda: calls.append(1)}

    settings = bench.Settings(warmup=1, repeat=3, min_time=0.001)
    [row] = bench.run(select("P1"), [Counting("counting")], ["float32"], settings)
    assert row["number"] > 1 and len(row["times_ms"]) == 3
    assert len(calls) == 1 + 3 * (1 + row["number"])  # warm-up, then per sample: lead-in + timed calls


def test_tables_mark_the_fastest_peer_and_give_ratios():
    rows = [
        {"dtype": "float32", "shape": "S1", "what": "w", "peer": peer, "phase": phase, "median_ms": ms}
        for peer, ms in (("a", 2.0), ("b", 4.0))
        for phase in ("forward", "backward")
    ]
    text = bench.tables(rows)
    assert "| S1 | w | **2 (1.00x)** | 4 (2.00x) |" in text
    assert "| S1 | w | **4 (1.00x)** | 8 (2.00x) |" in text  # forward + backward


def test_report_header_says_whether_torch_on_a_gpu_used_tf32():
    row = {
        "dtype": "float32",
        "shape": "S1",
        "what": "w",
        "peer": "cupy",
        "phase": "forward",
        "median_ms": 1.0,
    }
    machine = {"cpu": "c", "cores": 1, "gpu": ["g"], "blas": "b", "versions": {}}
    doc = {
        "date": "d",
        "threads": None,
        "command": "fastconv bench",
        "settings": {"repeat": 1, "warmup": 1, "min_time": 0.0},
        "results": [row],
        "machine": machine,
    }
    assert "TF32" not in render(doc)
    machine["torch_cuda"] = {"cudnn": 91000, "tf32": False}
    assert "| torch-cuda: cuDNN 91000, TF32 off\n" in render(doc)


def _header(printed: str) -> str:
    return [line for line in printed.splitlines() if line.startswith("| shape")][0]


def test_jax_peer_times_conv_pool_and_training_step_when_installed(tmp_path, capsys, threads_restored):
    pytest.importorskip("jax")
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numpy", "--no-torch", "--shapes", "S2,P1,T2", "--json", str(out_json)]
    assert bench.main([*argv, "-q"]) == 0
    printed = capsys.readouterr().out
    assert _header(printed) == "| shape | case | numpy | jax |"
    doc = json.loads(out_json.read_text())
    rows = {(r["shape"], r["phase"]): r for r in doc["results"] if r["peer"] == "jax"}
    assert set(rows) == {
        ("S2", "forward"),
        ("S2", "backward"),
        ("P1", "forward"),
        ("P1", "backward"),
        ("T2", "step"),
    }
    assert all(r["median_ms"] > 0 for r in rows.values())
    assert doc["machine"]["versions"]["jax"] and doc["machine"]["versions"]["jaxlib"]


def test_no_jax_leaves_jax_out(capsys):
    assert (
        bench.main(["--quick", "--backends", "numpy", "--no-torch", "--no-jax", "--shapes", "P1", "-q"]) == 0
    )
    assert _header(capsys.readouterr().out) == "| shape | case | numpy |"


def test_jax_peer_gradients_match_numpy():
    pytest.importorskip("jax")
    import numpy as np

    import fastconv
    from fastconv.bench.peers import JaxPeer

    case = BY_NAME["S2"]
    a = conv_inputs(case, "float32")
    calls = JaxPeer().calls(case, "float32")
    y = np.asarray(calls["forward"]())
    dx, dW, db = (np.asarray(g) for g in calls["backward"]())
    ref_y = fastconv.conv2d(a["x"], a["W"], a["b"], backend="numpy")
    ref_dx, ref_dW, ref_db = fastconv.conv2d_backward(a["dout"], a["x"], a["W"], backend="numpy")
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    for got, ref in ((dx, ref_dx), (dW, ref_dW), (db, ref_db)):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-2)


def test_jax_threads_are_applied_by_narrowing_affinity_while_its_client_starts():
    pytest.importorskip("jax")
    import subprocess
    import sys

    code = (
        "import os; from fastconv.bench import peers; before = os.sched_getaffinity(0); "
        "peers.start_jax(1); import jax; assert os.sched_getaffinity(0) == before; "
        "print(peers._JAX_START, len(before))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "'threads': 1" in done.stdout and "note" not in done.stdout


def test_torch_variants_are_timed_side_by_side_and_recorded(tmp_path, capsys):
    pytest.importorskip("torch")
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numpy", "--no-jax", "--shapes", "S2,T2", "--json", str(out_json), "-q"]
    assert bench.main([*argv, "--torch-variant", "eager,channels_last+no-mkldnn"]) == 0
    printed = capsys.readouterr().out
    assert _header(printed) == "| shape | case | numpy | torch[eager] | torch[channels_last+no-mkldnn] |"
    assert "torch variant: eager, channels_last+no-mkldnn" in printed
    doc = json.loads(out_json.read_text())
    assert doc["torch_variants"] == ["eager", "channels_last+no-mkldnn"]
    assert all(r["median_ms"] > 0 for r in doc["results"])


def test_default_torch_variant_is_named_torch_and_recorded(tmp_path, capsys):
    pytest.importorskip("torch")
    from fastconv.bench.peers import TORCH_DEFAULT_VARIANT

    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numpy", "--no-jax", "--shapes", "P1", "--json", str(out_json), "-q"]
    assert bench.main(argv) == 0
    assert f"torch variant: {TORCH_DEFAULT_VARIANT}" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["torch_variants"] == [TORCH_DEFAULT_VARIANT]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--torch-variant", "fastest"], "unknown variant 'fastest'"),
        (["--torch-variant", "compile+max-autotune"], "unknown variant"),
        (["--algorithm", "fft"], "unknown algorithm 'fft'"),
    ],
)
def test_bad_variant_or_algorithm_exits_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--no-jax", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _needs_algorithms():
    pytest.importorskip("numba")


def test_fastconv_conv_rows_name_the_algorithm_that_ran(tmp_path, capsys):
    _needs_algorithms()
    import fastconv

    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numba", "--no-torch", "--no-jax", "--shapes", "S2,P1"]
    assert bench.main([*argv, "--json", str(out_json), "-q"]) == 0
    printed = capsys.readouterr().out
    rows = {(r["shape"], r["phase"]): r for r in json.loads(out_json.read_text())["results"]}
    fwd = fastconv.conv_algorithm((64, 1, 28, 28), (32, 1, 3, 3), backend="numba")
    assert rows[("S2", "forward")]["algorithm"] == fwd
    assert "algorithm" in rows[("S2", "backward")] and "algorithm" not in rows[("P1", "forward")]
    assert "| S2 | x(64,1,28,28) W(32,1,3,3) s1 p0 | **" in printed and f"** {fwd} |" in printed


def test_algorithm_option_times_numba_once_per_algorithm_and_notes_unsupported_shapes(tmp_path, capsys):
    _needs_algorithms()
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numba", "--no-torch", "--no-jax", "--shapes", "S1,S2"]
    assert bench.main([*argv, "--algorithm", "gemm,winograd", "--json", str(out_json), "-q"]) == 0
    printed = capsys.readouterr().out
    assert _header(printed) == "| shape | case | numba | numba[gemm] | numba[winograd] |"
    doc = json.loads(out_json.read_text())
    assert doc["algorithms"] == ["gemm", "winograd"]
    assert set(doc["machine"]["backends"]) == {"numba"}  # numba[gemm] is the numba backend
    rows = {(r["shape"], r["phase"], r["peer"]): r for r in doc["results"]}
    s1 = rows[("S1", "forward", "numba[winograd]")]  # 5x5 filters: no Winograd F(4x4,3x3)
    assert s1["median_ms"] is None and s1["note"].startswith("winograd not supported") and "error" not in s1
    assert rows[("S2", "forward", "numba[winograd]")]["median_ms"] > 0
    assert rows[("S2", "backward", "numba[gemm]")]["algorithm"] == "gemm"
    assert "| n/s |" in printed and "n/s (not supported): numba[winograd] S1" in printed
