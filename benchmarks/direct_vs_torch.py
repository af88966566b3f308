"""The direct kernels of ``fastconv.backends.numba.direct`` against the GEMM paths and PyTorch.

Three groups, samples interleaved (round-robin across the candidates of a case, median of
``--repeat`` after one warm-up call each), 2 threads everywhere (``fastconv.configure(threads=)``,
``torch.set_num_threads``):

* ``fwd``: direct forward vs the numba im2col + GEMM forward vs ``F.conv2d`` (S1, S2; S3-S5 show
  where the direct kernel stops paying);
* ``dx``: ``backward_dx`` vs the numba ``conv2d_backward`` dx path (col2im; timed with dW and db, as
  it only comes that way, and separately ``need_dx=False`` so the difference is its dx) vs PyTorch's
  ``convolution_backward`` for dx only;
* ``pool``: the numba max-pool backward (``fastconv.backends.numba.pooling``) vs
  ``aten.max_pool2d_with_indices_backward``, float32.

python benchmarks/direct_vs_torch.py [--dtype float32 float64] [--groups fwd dx pool] [--repeat 7]
    [--threads 2] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fastconv
from fastconv._shapes import conv_output_size
from fastconv.backends.numba import direct
from fastconv.backends.numba import ops as nb_ops
from fastconv.backends.numba import pooling as nb_pooling

FWD = {
    "S1": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),
    "S2": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 0),
    "S3": ((64, 32, 13, 13), (64, 32, 3, 3), 1, 0),
    "S4": ((64, 64, 32, 32), (64, 64, 3, 3), 1, 1),
}
DX = {
    "S1": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),
    "S2": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 0),
    "S3": ((64, 32, 13, 13), (64, 32, 3, 3), 1, 0),
    "S4": ((64, 64, 32, 32), (64, 64, 3, 3), 1, 1),
    "S5": ((32, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    "S6": ((32, 64, 56, 56), (128, 64, 3, 3), 2, 1),
}
POOL = {
    "P1": ((100, 30, 24, 24), 2, 2, 0),
    "P2": ((64, 32, 26, 26), 2, 2, 0),
    "P3": ((64, 64, 32, 32), 3, 2, 1),
}


CLOCK = time.perf_counter


def interleaved(cands: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median milliseconds per candidate: one warm-up call each, then ``repeat`` rounds, one call of
    each candidate per round."""
    for fn in cands.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(repeat):
        for k, fn in cands.items():
            t = CLOCK()
            fn()
            samples[k].append(CLOCK() - t)
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


def row(case: str, dtype: str, ms: dict[str, float], ref: str) -> None:
    cells = "  ".join(f"{k} {v:8.3f}" for k, v in ms.items())
    ratios = "  ".join(f"{k}/{ref} {v / ms[ref]:.2f}x" for k, v in ms.items() if k != ref)
    print(f"{case:3s} {dtype:8s} {cells}   {ratios}", flush=True)


def fwd_case(dtype: str, repeat: int, torch: Any, rng: np.random.Generator, xs, ws, s: int, p: int) -> dict:
    F = torch.nn.functional
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    tx, tW, tb = (torch.from_numpy(a) for a in (x, W, b))
    st, pd, one = (s, s), (p, p, p, p), (1, 1)  # pad (top, bottom, left, right), contract v2
    return interleaved(
        {
            "direct": lambda: direct.forward(x, W, b, st, pd, one),
            "gemm": lambda: nb_ops.conv2d_forward(x, W, b, st, pd, one, 1, "NCHW"),
            "torch": lambda: F.conv2d(tx, tW, tb, stride=s, padding=p),
        },
        repeat,
    )


def dx_case(dtype: str, repeat: int, torch: Any, rng: np.random.Generator, xs, ws, s: int, p: int) -> dict:
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    st, pd, one = (s, s), (p, p, p, p), (1, 1)  # pad (top, bottom, left, right), contract v2
    oh, ow = conv_output_size(xs[2:], ws[2:], st, pd, one)
    g = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    tg, tx, tW = (torch.from_numpy(a) for a in (g, x, W))
    ms = interleaved(
        {
            "new": lambda: direct.backward_dx(g, W, xs, st, pd, one),
            "all": lambda: nb_ops.conv2d_backward(g, x, W, st, pd, one, 1, "NCHW", need_dx=True),
            "dWdb": lambda: nb_ops.conv2d_backward(g, x, W, st, pd, one, 1, "NCHW", need_dx=False),
            "torch": lambda: torch.ops.aten.convolution_backward(
                tg, tx, tW, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False]
            ),
        },
        repeat,
    )
    return {"new": ms["new"], "col2im": ms["all"] - ms["dWdb"], "torch": ms["torch"]}


def pool_case(repeat: int, torch: Any, rng: np.random.Generator, xs, k: int, s: int, p: int) -> dict:
    x = rng.standard_normal(xs).astype(np.float32)
    pd = (p, p, p, p)  # pad (top, bottom, left, right); floor mode, as torch's default
    out_hw = conv_output_size(xs[2:], (k, k), (s, s), pd, (1, 1))
    y, am = nb_pooling.maxpool2d_forward(x, k, k, (s, s), pd, (1, 1), out_hw, "NCHW")
    g = rng.standard_normal(y.shape).astype(np.float32)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    _, ti = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
    return interleaved(
        {
            "numba": lambda: nb_pooling.maxpool2d_backward(g, am, xs, k, k, (s, s), pd, (1, 1), "NCHW"),
            "torch": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                tg, tx, [k, k], [s, s], [p, p], [1, 1], False, ti
            ),
        },
        repeat,
    )


def run_fwd(dtype: str, repeat: int, torch: Any, rng: np.random.Generator) -> None:
    print(f"\n# forward, {dtype}: ms (direct: numba direct kernel, gemm: numba im2col+GEMM)")
    for name, (xs, ws, s, p) in FWD.items():
        row(name, dtype, fwd_case(dtype, repeat, torch, rng, xs, ws, s, p), "torch")


def run_dx(dtype: str, repeat: int, torch: Any, rng: np.random.Generator) -> None:
    print(
        f"\n# dx, {dtype}: ms (new: backward_dx; col2im: conv2d_backward dx+dW+db minus the same call "
        "with need_dx=False; torch: convolution_backward dx only)"
    )
    for name, (xs, ws, s, p) in DX.items():
        row(name, dtype, dx_case(dtype, repeat, torch, rng, xs, ws, s, p), "col2im")


def run_pool(repeat: int, torch: Any, rng: np.random.Generator) -> None:
    print("\n# max-pool backward, float32: ms")
    for name, (xs, k, s, p) in POOL.items():
        row(name, "float32", pool_case(repeat, torch, rng, xs, k, s, p), "torch")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    ap.add_argument("--groups", nargs="+", default=["fwd", "dx", "pool"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the calling thread's CPU time (time.thread_time), only with --threads 1: on a "
        "machine shared with other jobs it counts only this thread's work",
    )
    args = ap.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            ap.error("--clock cpu needs --threads 1 (other threads' work is not counted)")
        CLOCK = time.thread_time
    import torch

    fastconv.configure(threads=args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"threads {args.threads}, clock {args.clock}, torch {torch.__version__}, "
        f"median of {args.repeat} interleaved samples"
    )
    for dtype in args.dtype:
        if "fwd" in args.groups:
            run_fwd(dtype, args.repeat, torch, rng)
        if "dx" in args.groups:
            run_dx(dtype, args.repeat, torch, rng)
    if "pool" in args.groups:
        run_pool(args.repeat, torch, rng)


if __name__ == "__main__":
    main()
