"""The NumPy backend against the book's classic im2col layers, forward and backward, in one process.

    python benchmarks/classic_vs_numpy.py [--repeat 15]

Samples of the two are interleaved. The classic algorithm is the book's Convolution layer
(``fastconv.testing.reference.BookConvolution``: im2col by tap loop, GEMM, transposes, col2im by tap
loop). Prints the median milliseconds and the ratio classic / numpy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import fastconv
from fastconv.testing import reference

SHAPES = {
    "S1 x(100,1,28,28) W(30,1,5,5)": ((100, 1, 28, 28), (30, 1, 5, 5), 0),
    "S4 x(64,64,32,32) W(64,64,3,3) p1": ((64, 64, 32, 32), (64, 64, 3, 3), 1),
}


def median_ms(fns: Sequence[Callable[[], Any]], repeat: int) -> list[float]:
    """Median ms per call of each function, their samples interleaved so that load falls on all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [1e3 * statistics.median(samples) for samples in times]


def main() -> None:
    """Print a markdown table: classic and numpy forward and backward, and their ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"| shape ({args.dtype}) | classic fwd ms | numpy fwd ms | ratio | classic bwd ms | numpy bwd ms | ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, (xs, ws, pad) in SHAPES.items():
        x = rng.standard_normal(xs).astype(args.dtype)
        W = rng.standard_normal(ws).astype(args.dtype)
        b = rng.standard_normal(ws[0]).astype(args.dtype)
        book = reference.BookConvolution(W, b, 1, pad)
        dout = rng.standard_normal(book.forward(x).shape).astype(args.dtype)
        cf, nf = median_ms(
            [
                lambda book=book, x=x: book.forward(x),
                lambda x=x, W=W, b=b, pad=pad: fastconv.conv2d(x, W, b, 1, pad, backend="numpy"),
            ],
            args.repeat,
        )
        cb, nb = median_ms(
            [
                lambda book=book, dout=dout: book.backward(dout),
                lambda d=dout, x=x, W=W, pad=pad: fastconv.conv2d_backward(d, x, W, 1, pad, backend="numpy"),
            ],
            args.repeat,
        )
        print(f"| {label} | {cf:.1f} | {nf:.1f} | {cf / nf:.2f}x | {cb:.1f} | {nb:.1f} | {cb / nb:.2f}x |")


if __name__ == "__main__":
    main()
