"""A/B of the numba backend's NCHW GEMM convolution run directly and on NHWC copies (ops.NHWC_GEMM_MIN_C).

    python benchmarks/nhwc_route.py [--threads 2] [--rounds 9] [--shapes S3,S6]

Prints the median forward and backward (dx, dW, db) time of each variant, float32, the two variants
interleaved round by round (BENCHMARKS.md, "The conv family").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv
from fastconv.backends.numba import ops
from fastconv.bench.cases import CONV_CASES


def _seconds(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _compare(case, rounds: int, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    """Print the median forward and backward of ``case`` with and without the NHWC copies."""
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    W = rng.standard_normal(case.w_shape).astype(np.float32)
    s, p, d = (case.stride,) * 2, (case.pad,) * 4, (1, 1)
    dy = rng.standard_normal(ops.conv2d_forward(x, W, None, s, p, d, 1, "NCHW").shape).astype(np.float32)
    variants = {"nhwc copies": ops.NHWC_GEMM_MIN_C, "nchw": 10**9}
    times: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in variants}
    try:
        for _ in range(rounds):
            for name, min_c in variants.items():
                ops.NHWC_GEMM_MIN_C = min_c
                times[name][0].append(_seconds(lambda: ops.conv2d_forward(x, W, None, s, p, d, 1, "NCHW")))
                times[name][1].append(
                    _seconds(lambda: ops.conv2d_backward(dy, x, W, s, p, d, 1, "NCHW", True))
                )
    finally:
        ops.NHWC_GEMM_MIN_C = variants["nhwc copies"]
    for name, (fwd, bwd) in times.items():
        print(
            f"{case.name} {name:12s} forward {np.median(fwd) * 1e3:7.2f} ms  backward {np.median(bwd) * 1e3:7.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--shapes", default="S3,S6")
    args = parser.parse_args()
    fastconv.configure(threads=args.threads)
    rng = np.random.default_rng(0)
    for case in CONV_CASES:
        if case.name in args.shapes.split(","):
            _compare(case, args.rounds, rng)


if __name__ == "__main__":
    main()
