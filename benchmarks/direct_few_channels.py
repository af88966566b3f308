"""A/B of the numba backend's "gemm" and "direct" forward on layers with few input channels (the rule
``DIRECT_MAX_C`` / ``DIRECT_MAX_F`` in fastconv/backends/numba/algorithms.py).

    python benchmarks/direct_few_channels.py [--threads 2] [--rounds 15] [--quick]

Prints the median forward time of each algorithm, float32, the two interleaved run by run, and the
algorithm "auto" picks (BENCHMARKS.md, "Adapters").
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

import fastconv

# (x shape, W shape, stride, pad): CS231n's first conv, LeNet-style layers, strided stems
LAYERS = [
    ((50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
    ((50, 3, 32, 32), (32, 3, 5, 5), 1, 2),
    ((64, 6, 28, 28), (16, 6, 5, 5), 1, 0),
    ((64, 8, 32, 32), (32, 8, 3, 3), 1, 1),
    ((16, 3, 64, 64), (64, 3, 7, 7), 2, 3),
    ((8, 3, 96, 96), (64, 3, 11, 11), 4, 2),
    ((64, 4, 32, 32), (64, 4, 5, 5), 1, 2),
]


def _seconds(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="two small layers, one round: a smoke run")
    args = ap.parse_args()
    fastconv.configure(threads=args.threads)
    rng = np.random.default_rng(0)
    layers = (
        [((2, 3, 12, 12), (4, 3, 5, 5), 1, 2), ((2, 3, 16, 16), (8, 3, 7, 7), 2, 3)] if args.quick else LAYERS
    )
    rounds = 1 if args.quick else args.rounds
    print(f"float32, {args.threads} threads, forward ms, median of {rounds} interleaved runs")
    print("| x | W | stride | gemm | direct | auto picks |\n|---|---|---:|---:|---:|---|")
    for xs, ws, s, p in layers:
        x = rng.standard_normal(xs).astype(np.float32)
        W = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        calls = {
            a: functools.partial(fastconv.conv2d, x, W, b, s, p, backend="numba", algorithm=a)
            for a in ("gemm", "direct")
        }
        for call in calls.values():
            call()  # compile and warm
        times: dict[str, list[float]] = {a: [] for a in calls}
        for _ in range(rounds):
            for a, call in calls.items():
                times[a].append(_seconds(call))
        auto = fastconv.conv_algorithm(xs, ws, s, p, backend="numba")
        g, d = (np.median(times[a]) * 1e3 for a in ("gemm", "direct"))
        print(f"| {xs} | {ws} | {s} | {g:.2f} | {d:.2f} | {auto} |")


if __name__ == "__main__":
    main()
