"""GPU runbook: on a machine with an NVIDIA GPU, check the cupy backend and time it against cuDNN.

    python -m fastconv.gpu_runbook [--shapes S1,S4,P3] [--dtype float32] [--no-tests] [--tf32]

Needs CuPy (``pip install 'fastconv[cuda12]'``) and, for the timings, PyTorch with CUDA; no network.
Steps:

1. print the versions and the device (CuPy, CUDA runtime/driver, NVRTC, PyTorch, cuDNN);
2. compile every kernel (``warmup``) and run the ``gpu`` tests (``pytest -m gpu tests``) when the
   ``tests`` directory is beside the package (a source checkout);
3. time, on the benchmark shapes (:mod:`fastconv._bench_shapes`), conv forward, conv backward
   (dx, dW, db), max-pool forward (values and argmax) and max-pool backward, through the public
   fastconv API on the cupy backend and through PyTorch's CUDA ops (cuDNN) on the same device, and
   print a markdown table of median times and ratios (fastconv / torch: below 1 means fastconv is
   faster), with the largest difference between the two results as a sanity check.

TF32 is off for PyTorch by default, so both sides compute in true float32 (CuPy's cuBLAS does not
use TF32 unless CUPY_TF32=1); ``--tf32`` allows it. Timings are wall-clock per call with the device
synchronised before and after a batch of calls, so they include each library's Python overhead.
Exit status: 0 when everything ran and the tests passed, 1 when a test failed, 2 when no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fastconv
from fastconv import _bench_shapes as shapes


def _timeit(fn: Callable[[], Any], sync: Callable[[], None], min_time: float = 0.2, repeat: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` batches, each lasting about ``min_time``."""
    fn()
    sync()  # warm-up: kernel compilation, cuDNN algorithm choice, memory pool growth
    number, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time / 4 or number >= 1 << 14:
            break
        number *= 2
    number = max(1, int(number * (min_time / max(elapsed, 1e-9))))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def _max_diff(a: Any, b: Any) -> float:
    a = np.asarray(fastconv.to_host(a), dtype=np.float64)
    b = np.asarray(b.detach().cpu().numpy(), dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0))


def _rows_for_conv(case: shapes.ConvCase, dtype: str, torch: Any) -> list[tuple[str, Any, Any, float]]:
    import cupy

    F = torch.nn.functional
    host = shapes.conv_inputs(case, dtype)
    cx, cW, cb, cd = (cupy.asarray(host[k]) for k in ("x", "W", "b", "dout"))
    tx, tW, tb, td = (torch.from_numpy(host[k]).cuda() for k in ("x", "W", "b", "dout"))
    s, p = case.stride, case.pad

    def fc_fwd():
        return fastconv.conv2d(cx, cW, cb, stride=s, pad=p, backend="cupy")

    def th_fwd():
        return F.conv2d(tx, tW, tb, stride=s, padding=p)

    def fc_bwd():
        return fastconv.conv2d_backward(cd, cx, cW, stride=s, pad=p, backend="cupy")

    def th_bwd():
        return torch.ops.aten.convolution_backward(
            td, tx, tW, [case.w_shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, True]
        )

    diff_f = _max_diff(fc_fwd(), th_fwd())
    diff_b = max(_max_diff(a, b) for a, b in zip(fc_bwd(), th_bwd(), strict=True))
    return [("conv forward", fc_fwd, th_fwd, diff_f), ("conv backward", fc_bwd, th_bwd, diff_b)]


def _rows_for_pool(case: shapes.PoolCase, dtype: str, torch: Any) -> list[tuple[str, Any, Any, float]]:
    import cupy

    F = torch.nn.functional
    host = shapes.pool_inputs(case, dtype)
    cx, cd = cupy.asarray(host["x"]), cupy.asarray(host["dout"])
    tx, td = torch.from_numpy(host["x"]).cuda(), torch.from_numpy(host["dout"]).cuda()
    k, s, p = case.kernel, case.stride, case.pad
    _, c_arg = fastconv.max_pool2d(cx, k, s, p, backend="cupy")
    _, t_idx = F.max_pool2d(tx, k, s, p, return_indices=True)

    def fc_fwd():
        return fastconv.max_pool2d(cx, k, s, p, backend="cupy")

    def th_fwd():
        return F.max_pool2d(tx, k, s, p, return_indices=True)

    def fc_bwd():
        return fastconv.max_pool2d_backward(cd, c_arg, case.x_shape, k, s, p, backend="cupy")

    def th_bwd():
        return torch.ops.aten.max_pool2d_with_indices_backward(
            td, tx, [k, k], [s, s], [p, p], [1, 1], False, t_idx
        )

    diff_f = _max_diff(fc_fwd()[0], th_fwd()[0])
    diff_b = _max_diff(fc_bwd(), th_bwd())
    return [("max pool forward", fc_fwd, th_fwd, diff_f), ("max pool backward", fc_bwd, th_bwd, diff_b)]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of timing rows (keys: case, op, shape, fastconv_ms, torch_ms, max_diff)."""
    out = [
        "| case | op | shape | fastconv cupy (ms) | torch cuDNN (ms) | fastconv / torch | max abs diff |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["fastconv_ms"] / r["torch_ms"] if r["torch_ms"] > 0 else float("nan")
        out.append(
            f"| {r['case']} | {r['op']} | {r['shape']} | {r['fastconv_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{ratio:.2f} | {r['max_diff']:.2e} |"
        )
    return "\n".join(out)


def run_tests(extra: list[str]) -> int | None:
    """Run ``pytest -m gpu`` on the checkout's tests; None when there is no tests directory."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    if not tests.is_dir():
        print(f"(no tests directory at {tests}: run the runbook from a source checkout to include the tests)")
        return None
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", str(tests), *extra]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=tests.parent).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv.gpu_runbook", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shapes", default=None, help="comma list of benchmark shapes (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu pytest run")
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 for float32 convolutions")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timing batch (default 0.2)")
    parser.add_argument("--pytest-args", default="", help="extra arguments for pytest, one string")
    parser.add_argument(
        "--markdown", default=None, help="also write the report (header and table) to this file"
    )
    args = parser.parse_args(argv)

    from fastconv.backends import cupy_backend

    reason = cupy_backend.probe()
    if reason is not None:
        print(f"the cupy backend is unavailable here: {reason}", file=sys.stderr)
        return 2
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    say(f"# fastconv GPU runbook, {datetime.datetime.now().isoformat(timespec='seconds')}")
    say(f"- command: python -m fastconv.gpu_runbook {' '.join(argv if argv is not None else sys.argv[1:])}")
    for key, value in cupy_backend.info().items():
        say(f"- {key}: {value}")
    t0 = time.perf_counter()
    cupy_backend.warmup()
    say(f"- kernels compiled (or loaded from CuPy's cache) in {time.perf_counter() - t0:.2f} s")

    status = 0
    if not args.no_tests:
        rc = run_tests(args.pytest_args.split())
        if rc is not None:
            say(f"- pytest -m gpu: exit status {rc} ({'passed' if rc == 0 else 'FAILED'})")
        if rc not in (None, 0, 5):  # 5: no tests collected
            status = 1

    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no cuDNN comparison (pip install torch with CUDA support)")
        return status
    if not torch.cuda.is_available():
        print("PyTorch sees no CUDA device (a CPU-only build?): no cuDNN comparison")
        return status
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    say(
        f"- torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"device {torch.cuda.get_device_name()}, dtype {args.dtype}, TF32 {'on' if args.tf32 else 'off'}, "
        "cudnn.benchmark on"
    )

    import cupy

    def sync() -> None:
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()

    rows = []
    for case in shapes.select(args.shapes):
        builder = _rows_for_conv if case.kind == "conv" else _rows_for_pool
        for op, fc, th, diff in builder(case, args.dtype, torch):
            rows.append(
                {
                    "case": case.name,
                    "op": op,
                    "shape": case.describe(),
                    "fastconv_ms": 1e3 * _timeit(fc, sync, args.min_time),
                    "torch_ms": 1e3 * _timeit(th, sync, args.min_time),
                    "max_diff": diff,
                }
            )
            print(f"  {case.name} {op}: done", file=sys.stderr, flush=True)
    say()
    say(format_table(rows))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(report) + "\n")
        print(f"(report written to {args.markdown})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
