"""Tune the numba backend's CHUNK_BYTES: forward + backward of S4 and S5 (float32) for several
column-chunk sizes, samples interleaved, median of --repeat.

python benchmarks/numba_chunk_bytes.py [--threads 2] [--repeat 7] [--shapes S4,S5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fastconv._bench_shapes import ConvCase, conv_inputs, select
from fastconv.backends import numba_backend as nb

SIZES = {"4 MiB": 4 << 20, "16 MiB": 16 << 20, "64 MiB": 64 << 20, "whole batch": 1 << 50}


def measure_case(case: ConvCase, repeat: int) -> dict[str, float]:
    """Median seconds of forward + backward for each chunk size."""
    a = conv_inputs(case, np.float32)
    conv = ((case.stride,) * 2, (case.pad,) * 2, (1, 1))

    def step() -> None:
        nb.conv2d_forward(a["x"], a["W"], a["b"], *conv)
        nb.conv2d_backward(a["dout"], a["x"], a["W"], *conv)

    times: dict[str, list[float]] = {label: [] for label in SIZES}
    for size in SIZES.values():
        nb.CHUNK_BYTES = size
        step()
    for _ in range(repeat):
        for label, size in SIZES.items():
            nb.CHUNK_BYTES = size
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(v) for label, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shapes", default="S4,S5", help="convolution shapes of fastconv bench")
    args = parser.parse_args()
    nb.set_threads(args.threads)
    default = nb.CHUNK_BYTES
    try:
        for case in select(args.shapes):
            medians = measure_case(case, args.repeat)
            cells = ", ".join(f"{label} {s * 1e3:.0f} ms" for label, s in medians.items())
            print(f"{case.name} forward + backward: {cells}")
    finally:
        nb.CHUNK_BYTES = default


if __name__ == "__main__":
    main()
