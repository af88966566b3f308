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
    assert bench.main(["--quick", "--backends", "numpy", "--no-torch", "--shapes", "T1", "-q"]) == 0
    assert "| T1 | train step: SimpleConvNet, batch 100, adam | **" in capsys.readouterr().out


def test_torch_peer_is_timed_beside_numpy_when_installed(capsys):
    pytest.importorskip("torch")
    assert bench.main(["--quick", "--backends", "numpy", "--shapes", "S2", "-q"]) == 0
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
