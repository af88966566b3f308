"""Tune the numba backend's CHUNK_BYTES: forward + backward of S4 and S5 (float32) for several
column-chunk sizes, samples interleaved, median of --repeat.

python benchmarks/numba_chunk_bytes.py [--threads 2] [--repeat 7] [--shapes S4,S5] [--gemm-threads blas]

CHUNK_BYTES (in ``fastconv.backends.numba.ops``) is an internal constant, not a setting: this
script changes it on the module for each sample and puts it back at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastconv
from fastconv.backends.numba import ops
from fastconv.bench.cases import ConvCase, conv_inputs, select

SIZES = {"4 MiB": 4 << 20, "16 MiB": 16 << 20, "64 MiB": 64 << 20, "whole batch": 1 << 50}


def measure_case(case: ConvCase, repeat: int) -> dict[str, float]:
    """Median seconds of forward + backward of ``case`` for each chunk size of :data:`SIZES`."""
    a = conv_inputs(case, np.float32)
    s, p = case.stride, case.pad

    def step() -> None:
        fastconv.conv2d(a["x"], a["W"], a["b"], s, p, backend="numba")
        fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, backend="numba")

    times: dict[str, list[float]] = {label: [] for label in SIZES}
    for size in SIZES.values():
        ops.CHUNK_BYTES = size
        step()
    for _ in range(repeat):
        for label, size in SIZES.items():
            ops.CHUNK_BYTES = size
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(v) for label, v in times.items()}


def main() -> None:
    """Print, per shape, the median forward + backward time for each chunk size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shapes", default="S4,S5", help="convolution shapes of fastconv bench")
    parser.add_argument(
        "--gemm-threads",
        choices=("blas", "split"),
        default="blas",
        help="how the GEMMs are threaded (fastconv.configure(gemm_threads=...)); default blas",
    )
    args = parser.parse_args()
    try:
        cases = select(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    if not all(isinstance(case, ConvCase) for case in cases):
        parser.error("--shapes: convolution shapes only (S1-S6)")
    fastconv.configure(threads=args.threads, gemm_threads=args.gemm_threads)
    default = ops.CHUNK_BYTES
    try:
        for case in cases:
            medians = measure_case(case, args.repeat)
            cells = ", ".join(f"{label} {s * 1e3:.0f} ms" for label, s in medians.items())
            print(f"{case.name} forward + backward: {cells}")
    finally:
        ops.CHUNK_BYTES = default


if __name__ == "__main__":
    main()
