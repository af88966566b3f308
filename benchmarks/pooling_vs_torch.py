"""The numba backend's pooling kernels (:mod:`fastconv.backends.numba.pooling`) against PyTorch's CPU
pools, in both memory formats.

For every case and phase (forward, backward) four candidates are timed, samples interleaved (one
warm-up call each, then ``--repeat`` rounds of one call per candidate; best of the rounds):
``ours NCHW``, ``ours NHWC``, ``torch NCHW`` (contiguous) and ``torch NHWC`` (channels_last).
PyTorch's backward is the aten op alone (``avg_pool2d_backward``, ``max_pool2d_with_indices_backward``),
without autograd's bookkeeping. Threads: ``fastconv.configure(threads=)`` and
``torch.set_num_threads`` get the same count.

Printed per row: the four times in ms, ``vs torch`` = (faster of torch's two formats) / (faster of
ours) -- above 1 we are faster -- and ``NHWC/NCHW`` of ours.

python benchmarks/pooling_vs_torch.py [--dtype float32] [--cases A1 A2 G1 P1 P2 P3] [--repeat 7]
    [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fastconv
from fastconv.backends.numba import pooling

# name: (kind, x shape NCHW, kernel, stride, pad)
CASES: dict[str, tuple[str, tuple[int, int, int, int], int, int, int]] = {
    "A1": ("avg", (32, 64, 28, 28), 2, 2, 0),
    "A2": ("avg", (32, 32, 32, 32), 3, 2, 1),
    "G1": ("avg", (64, 256, 7, 7), 7, 7, 0),  # global average pooling
    "P1": ("max", (64, 32, 26, 26), 2, 2, 0),  # fastconv bench's P1-P3
    "P2": ("max", (64, 64, 32, 32), 2, 2, 0),
    "P3": ("max", (32, 64, 56, 56), 3, 2, 1),
}


def best_of(cands: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Best milliseconds per candidate: one warm-up call each, then ``repeat`` rounds of one call each."""
    for fn in cands.values():
        fn()
    best = {k: float("inf") for k in cands}
    for _ in range(repeat):
        for name, fn in cands.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
    return best


def candidates(case: str, phase: str, dtype: str) -> dict[str, Callable[[], Any]]:
    import torch

    kind, shape, k, s, p = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    h, w = shape[2:]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    dout = rng.standard_normal(shape[:2] + (oh, ow)).astype(dtype)
    xs = {"NCHW": x, "NHWC": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    ds = {"NCHW": dout, "NHWC": np.ascontiguousarray(dout.transpose(0, 2, 3, 1))}
    pad4, one = (p, p, p, p), (1, 1)
    xt = {"NCHW": torch.from_numpy(x)}
    xt["NHWC"] = xt["NCHW"].contiguous(memory_format=torch.channels_last)
    dt = {"NCHW": torch.from_numpy(dout)}
    dt["NHWC"] = dt["NCHW"].contiguous(memory_format=torch.channels_last)
    out: dict[str, Callable[[], Any]] = {}
    for lay in ("NCHW", "NHWC"):
        xl, dl, tx, td = xs[lay], ds[lay], xt[lay], dt[lay]
        if kind == "avg":
            if phase == "forward":
                out[f"ours {lay}"] = lambda xl=xl, lay=lay: pooling.avgpool2d_forward(
                    xl, k, k, (s, s), pad4, (oh, ow), True, lay
                )
                out[f"torch {lay}"] = lambda tx=tx: torch.nn.functional.avg_pool2d(tx, k, s, p)
            else:
                out[f"ours {lay}"] = lambda xl=xl, dl=dl, lay=lay: pooling.avgpool2d_backward(
                    dl, xl.shape, k, k, (s, s), pad4, True, lay
                )
                out[f"torch {lay}"] = lambda tx=tx, td=td: torch.ops.aten.avg_pool2d_backward(
                    td, tx, [k, k], [s, s], [p, p], False, True, None
                )
        else:
            y, am = pooling.maxpool2d_forward(xl, k, k, (s, s), pad4, one, (oh, ow), lay)
            _, ti = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
            if phase == "forward":
                out[f"ours {lay}"] = lambda xl=xl, lay=lay: pooling.maxpool2d_forward(
                    xl, k, k, (s, s), pad4, one, (oh, ow), lay
                )
                out[f"torch {lay}"] = lambda tx=tx: torch.nn.functional.max_pool2d(
                    tx, k, s, p, return_indices=True
                )
            else:
                out[f"ours {lay}"] = lambda xl=xl, dl=dl, am=am, lay=lay: pooling.maxpool2d_backward(
                    dl, am, xl.shape, k, k, (s, s), pad4, one, lay
                )
                out[f"torch {lay}"] = lambda tx=tx, td=td, ti=ti: (
                    torch.ops.aten.max_pool2d_with_indices_backward(
                        td, tx, [k, k], [s, s], [p, p], [1, 1], False, ti
                    )
                )
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    fastconv.configure(threads=args.threads)
    torch.set_num_threads(args.threads)
    for dtype in args.dtype:
        pooling.warmup_kernels(dtype)
    print(f"threads {args.threads}, best of {args.repeat} interleaved rounds, ms")
    head = f"{'case':5} {'dtype':8} {'phase':9}" + "".join(
        f"{c:>11}" for c in ("ours NCHW", "ours NHWC", "torch NCHW", "torch NHWC", "vs torch", "NHWC/NCHW")
    )
    print(head)
    for dtype in args.dtype:
        for case in args.cases:
            for phase in ("forward", "backward"):
                t = best_of(candidates(case, phase, dtype), args.repeat)
                ours = min(t["ours NCHW"], t["ours NHWC"])
                theirs = min(t["torch NCHW"], t["torch NHWC"])
                row = "".join(f"{t[c]:11.3f}" for c in ("ours NCHW", "ours NHWC", "torch NCHW", "torch NHWC"))
                print(
                    f"{case:5} {dtype:8} {phase:9}{row}{theirs / ours:10.2f}x"
                    f"{t['ours NHWC'] / t['ours NCHW']:10.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
