"""Winograd F(4x4,3x3) / F(2x2,3x3) (numba backend) against the numba GEMM path and PyTorch CPU.

    python benchmarks/winograd_vs_torch.py                 # timings, S3/S4/S5, float32 and float64
    python benchmarks/winograd_vs_torch.py --phases        # + where the Winograd time goes, 1 thread
    python benchmarks/winograd_vs_torch.py --threads 1 --skip gemm   # both sides on one thread
    python benchmarks/winograd_vs_torch.py --accuracy      # max relative errors vs float64 (torch)

Forward: ``y = conv(x, W, b)``; backward: dx + dW + db. Samples are interleaved (one of each
candidate in turn, after warm-up), the median of ``--reps`` per candidate is printed in ms with its
ratio to PyTorch (``torch.set_num_threads`` = fastconv's thread count; PyTorch backward through
``torch.ops.aten.convolution_backward``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SHAPES = {  # name: (x shape, W shape, pad)
    "S3": ((64, 32, 13, 13), (64, 32, 3, 3), 0),
    "S4": ((64, 64, 32, 32), (64, 64, 3, 3), 1),
    "S5": ((32, 128, 28, 28), (128, 128, 3, 3), 1),
}


def _modules() -> tuple[Any, Any]:
    from fastconv.backends.numba import runtime, winograd

    return runtime, winograd


def _inputs(shape: str, dtype: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    xs, ws, pad = SHAPES[shape]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    oh, ow = xs[2] + 2 * pad - 2, xs[3] + 2 * pad - 2
    dout = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    return x, W, b, dout, pad


def candidates(shape: str, dtype: str) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    import torch
    import torch.nn.functional as F

    import fastconv

    _, wg = _modules()
    x, W, b, dout, pad = _inputs(shape, dtype)
    tx, tW, tb, td = (torch.from_numpy(a) for a in (x, W, b, dout))

    def torch_bwd() -> Any:
        return torch.ops.aten.convolution_backward(
            td, tx, tW, [tW.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, True]
        )

    fwd = {
        "torch": lambda: F.conv2d(tx, tW, tb, 1, pad),
        "gemm": lambda: fastconv.conv2d(x, W, b, 1, pad, backend="numba"),
        "wino4": lambda: wg.forward(x, W, b, (pad, pad), m=4),
        "wino2": lambda: wg.forward(x, W, b, (pad, pad), m=2),
    }
    bwd = {
        "torch": torch_bwd,
        "gemm": lambda: fastconv.conv2d_backward(dout, x, W, 1, pad, backend="numba"),
        "wino4": lambda: wg.backward(dout, x, W, (pad, pad), m=4),
        "wino2": lambda: wg.backward(dout, x, W, (pad, pad), m=2),
    }
    return fwd, bwd


def interleaved(cands: dict[str, Callable[[], Any]], reps: int, warm: int = 2) -> dict[str, float]:
    """Median ms per candidate, samples taken round-robin."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(warm + reps):
        for k, fn in cands.items():
            t = time.perf_counter()
            fn()
            if r >= warm:
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(shapes: list[str], dtypes: list[str], reps: int, threads: int | None, skip: set[str]) -> None:
    import torch

    import fastconv

    runtime, _ = _modules()
    if threads:
        fastconv.configure(threads=threads)
    torch.set_num_threads(runtime.num_threads())
    print(f"threads {runtime.num_threads()}, torch {torch.__version__}, reps {reps} (median, interleaved)")
    print("| shape | dtype | pass | torch ms | gemm | wino4 | wino2 |")
    print("|---|---|---|---|---|---|---|")
    for s in shapes:
        for dt in dtypes:
            for name, cands in zip(("forward", "backward"), candidates(s, dt)):
                cands = {k: v for k, v in cands.items() if k not in skip}
                med = interleaved(cands, reps)
                ref = med["torch"]
                cells = [
                    f"{med[k]:.1f} ms ({med[k] / ref:.2f}x)" if k in med else "-"
                    for k in ("gemm", "wino4", "wino2")
                ]
                print(f"| {s} | {dt} | {name} | {ref:.1f} | " + " | ".join(cells) + " |", flush=True)


def phases(shapes: list[str], dtypes: list[str]) -> None:
    """One thread, every chunk in turn: ms in each phase of the forward pass and of dW (the fastest of 3)."""
    runtime, wg = _modules()
    from fastconv.backends.numpy.winograd import matrices

    print(
        "| shape | dtype | m | filter GEMM | input transform | GEMMs | output transform (GEMM + scatter) | dW: dout transform | dW GEMMs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        for dt in dtypes:
            x, W, b, dout, pad = _inputs(s, dt)
            for m in (4, 2):
                at, _, bt, gg = matrices(m, dt)
                a_t = np.ascontiguousarray(at.T)
                a = m + 2
                n, c = x.shape[:2]
                f = W.shape[0]
                oh, ow = dout.shape[2:]
                th, tw = -(-oh // m), -(-ow // m)
                P = th * (tw + 1)
                step = wg._chunk(n, th * tw)
                V = np.empty((a * a, c, step * P), dt)
                M = np.empty((a * a, f, step * P), dt)
                dU = np.empty((a * a, f, c), dt)
                y = np.empty((n, f, oh, ow), dt)
                sc = wg._scratch(m, th, tw, step, dt)
                Y = np.empty((f, step * P, m * m), dt)
                aa = wg._kron_at(m, dt)
                keys = ("filt", "in", "mm", "out", "dM", "dU")
                t = dict.fromkeys(keys, np.inf)
                reps = 3
                with runtime.single_threaded_blas:
                    for rep in range(reps + 1):
                        marks = [time.perf_counter()]
                        U = wg._filter_transform(W, gg)
                        marks.append(time.perf_counter())
                        for n0 in range(0, n - step + 1, step):
                            wg.tile_transform(x, n0, n0 + step, pad, pad, bt, m, th, tw, V, *sc)
                            marks.append(time.perf_counter())
                            np.matmul(U, V, out=M)
                            marks.append(time.perf_counter())
                            np.matmul(M.reshape(a * a, -1).T, aa, out=Y.reshape(-1, m * m))
                            wg.untile(Y, n0, n0 + step, m, th, tw, b, y)
                            marks.append(time.perf_counter())
                            wg.tile_transform(dout, n0, n0 + step, 0, 0, a_t, m, th, tw, M, *sc)
                            marks.append(time.perf_counter())
                            for k in range(a * a):
                                np.dot(M[k], V[k].T, out=dU[k])
                            marks.append(time.perf_counter())
                        if rep:  # the first pass warms up; the fastest pass counts (least disturbed)
                            d = np.diff(marks)
                            for i, key in enumerate(keys):
                                t[key] = min(t[key], d[0] if i == 0 else d[i::5].sum())
                ms = {k: v * 1e3 for k, v in t.items()}
                print(
                    f"| {s} | {dt} | {m} | "
                    + " | ".join(f"{ms[k]:.1f}" for k in ("filt", "in", "mm", "out", "dM", "dU"))
                    + " |",
                    flush=True,
                )


def accuracy(shapes: list[str], dtypes: list[str]) -> None:
    """Max relative error max|y - y_ref| / max|y_ref| against float64 (torch float64 direct)."""
    import torch
    import torch.nn.functional as F

    _, wg = _modules()
    from fastconv.backends.numpy import winograd as wnp

    print("| shape | dtype | module | m | forward | dx | dW | torch fwd (same dtype) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in shapes:
        x, W, b, dout, pad = _inputs(s, "float64", seed=1)
        tx, tW, tb, td = (torch.from_numpy(a) for a in (x, W, b, dout))
        y_ref = F.conv2d(tx, tW, tb, 1, pad).numpy()
        grads = torch.ops.aten.convolution_backward(
            td, tx, tW, [tW.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, False]
        )
        dx_ref, dW_ref = grads[0].numpy(), grads[1].numpy()
        for dt in dtypes:
            xs, Ws, bs, ds = (a.astype(dt) for a in (x, W, b, dout))
            ty = F.conv2d(*(torch.from_numpy(a) for a in (xs, Ws, bs)), 1, pad).numpy()
            e_t = np.abs(ty - y_ref).max() / np.abs(y_ref).max()
            for mod_name, mod in (("numba", wg), ("numpy", wnp)):
                for m in (4, 2):
                    y = mod.forward(xs, Ws, bs, (pad, pad), m=m)
                    dx, dW, _ = mod.backward(ds, xs, Ws, (pad, pad), m=m)
                    errs = [
                        np.abs(u - r).max() / np.abs(r).max()
                        for u, r in ((y, y_ref), (dx, dx_ref), (dW, dW_ref))
                    ]
                    print(
                        f"| {s} | {dt} | {mod_name} | {m} | "
                        + " | ".join(f"{e:.1e}" for e in errs)
                        + f" | {e_t:.1e} |",
                        flush=True,
                    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="S3,S4,S5")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument(
        "--threads", type=int, default=None, help="threads for fastconv and torch (default: fastconv's)"
    )
    p.add_argument("--skip", default="", help="candidates to leave out, e.g. gemm")
    p.add_argument("--phases", action="store_true", help="also time the phases of the forward pass")
    p.add_argument("--accuracy", action="store_true", help="only measure the errors")
    a = p.parse_args(argv)
    shapes, dtypes = a.shapes.split(","), a.dtypes.split(",")
    if a.accuracy:
        accuracy(shapes, dtypes)
        return
    bench(shapes, dtypes, a.reps, a.threads, set(filter(None, a.skip.split(","))))
    if a.phases:
        phases(shapes, dtypes)


if __name__ == "__main__":
    main(sys.argv[1:])
