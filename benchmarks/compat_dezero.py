"""DeZero's own NumPy convolution and pooling against fastconv.compat.dezero, forward and backward.

    python benchmarks/compat_dezero.py [--threads 2] [--rounds 9] [--backend numba] [--json out.json]
    python benchmarks/compat_dezero.py --parts      # also each fastconv call of the adapter, alone
    python benchmarks/compat_dezero.py --quick      # tiny shapes, one round: a smoke run

Both sides make the same DeZero calls through ``Variable``s (float32, DeZero's default): the real
``dezero.functions_conv`` functions, then the same call through ``fastconv.compat.dezero``; each
sample is the forward (building the graph) and ``y.backward()`` from a fixed upstream gradient.
Rounds interleave the two (A, B, A, B ...) so that load from elsewhere falls on both alike; the
table gives medians in ms and DeZero / adapter. BLAS (threadpoolctl), numba and fastconv get
``--threads`` threads on both sides. The shapes are DeZero's typical layers: the MNIST CNN of its
examples (batch 100), a VGG16-style block (``dezero.models.VGG16``'s 64-channel convs, at 56x56,
batch 8), and the DCGAN generator's transposed convolution (``examples/gan.py``, batch 128).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# (case, what, function, x shape, W shape or None, kwargs)
CASES: list[tuple[str, str, str, tuple[int, ...], tuple[int, ...] | None, dict[str, Any]]] = [
    ("M1", "MNIST CNN conv 3x3 p1 1->32 28x28, N=100", "conv2d", (100, 1, 28, 28), (32, 1, 3, 3), {"pad": 1}),
    (
        "M2",
        "MNIST CNN conv 3x3 p1 32->64 14x14, N=100",
        "conv2d",
        (100, 32, 14, 14),
        (64, 32, 3, 3),
        {"pad": 1},
    ),
    (
        "MP",
        "MNIST CNN max pool 2x2/2 32ch 28x28, N=100",
        "pooling",
        (100, 32, 28, 28),
        None,
        {"k": 2, "s": 2},
    ),
    ("V1", "VGG conv 3x3 p1 64->64 56x56, N=8", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), {"pad": 1}),
    ("VP", "VGG max pool 2x2/2 64ch 56x56, N=8", "pooling", (8, 64, 56, 56), None, {"k": 2, "s": 2}),
    ("AP", "average pool 2x2/2 64ch 56x56, N=8", "average_pooling", (8, 64, 56, 56), None, {"k": 2, "s": 2}),
    (
        "D1",
        "DCGAN deconv 4x4/2 p1 128->64 7x7->14x14, N=128",
        "deconv2d",
        (128, 128, 7, 7),
        (128, 64, 4, 4),
        {"stride": 2, "pad": 1},
    ),
]


def _call(module: Any, fn: str, x: Any, W: Any, b: Any, kw: dict[str, Any]) -> Any:
    f = getattr(module, fn)
    if fn in ("conv2d", "deconv2d"):
        return f(x, W, b, kw.get("stride", 1), kw.get("pad", 0))
    return f(x, kw["k"], kw.get("s", 1), kw.get("p", 0))


def _sample(
    module: Any, fn: str, arrays: dict[str, Any], kw: dict[str, Any], Variable: Any
) -> tuple[float, float]:
    """(forward s, backward s) of one call with fresh Variables."""
    x = Variable(arrays["x"])
    W = None if arrays["W"] is None else Variable(arrays["W"])
    b = None if arrays["b"] is None else Variable(arrays["b"])
    t0 = time.perf_counter()
    y = _call(module, fn, x, W, b, kw)
    t1 = time.perf_counter()
    y.grad = Variable(arrays["gy"])
    y.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _kernel_parts(
    fastconv: Any, fdz: Any, fn: str, arrays: dict[str, Any], kw: dict[str, Any]
) -> dict[str, Any]:
    """The fastconv calls the adapter's forward and backward make for one case, each alone."""
    x, W, b, gy = arrays["x"], arrays["W"], arrays["b"], arrays["gy"]
    if fn in ("conv2d", "deconv2d"):
        s, p = kw.get("stride", 1), kw.get("pad", 0)
        Wz = np.zeros_like(W)  # Conv2DGradW's shape-only W
        if fn == "conv2d":
            # Conv2d.backward: gx = deconv2d(gy, W, outsize=x's), gW = Conv2DGradW(x, gy), gb = gy.sum
            k, (sh, sw), (ph, pw) = W.shape[2:], fdz._pair(s, "s", 1), fdz._pair(p, "p", 0)
            op = tuple(
                fdz._deconv_output_padding(o, size, kk, ss, pp, "")
                for o, size, kk, ss, pp in zip(gy.shape[2:], x.shape[2:], k, (sh, sw), (ph, pw))
            )
            return {
                "forward: conv2d": lambda: fastconv.conv2d(x, W, b, s, p),
                "gx: conv_transpose2d": lambda: fastconv.conv_transpose2d(gy, W, None, s, p, op),
                "gW: conv2d_backward(need_dx=False)": lambda: fastconv.conv2d_backward(
                    gy, x, Wz, s, p, need_dx=False
                ),
                "gb: gy.sum": lambda: gy.sum(axis=(0, 2, 3)),
            }
        # Deconv2d.backward: gx = conv2d(gy, W), gW = Conv2DGradW(gy, x), gb = gy.sum
        return {
            "forward: conv_transpose2d": lambda: fastconv.conv_transpose2d(x, W, b, s, p, 0),
            "gx: conv2d": lambda: fastconv.conv2d(gy, W, None, s, p),
            "gW: conv2d_backward(need_dx=False)": lambda: fastconv.conv2d_backward(
                x, gy, Wz, s, p, need_dx=False
            ),
            "gb: gy.sum": lambda: gy.sum(axis=(0, 2, 3)),
        }
    k, s = kw["k"], kw.get("s", 1)
    if fn == "pooling":
        _, argmax = fastconv.max_pool2d(x, k, s)
        return {
            "forward: max_pool2d": lambda: fastconv.max_pool2d(x, k, s),
            "gx: max_pool2d_backward": lambda: fastconv.max_pool2d_backward(gy, argmax, x.shape, k, s),
        }
    g64 = gy.astype(np.result_type(gy.dtype, np.asarray(4)))  # DeZero's gy / array(KH*KW) promotion
    return {
        "forward: avg_pool2d": lambda: fastconv.avg_pool2d(x, k, s),
        "gx: cast gy as DeZero promotes it": lambda: gy.astype(g64.dtype),
        "gx: avg_pool2d_backward": lambda: fastconv.avg_pool2d_backward(g64, x.shape, k, s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved samples of each side per case")
    parser.add_argument("--backend", default="numba", help="fastconv backend for the adapter (numba, numpy)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--parts", action="store_true", help="also time each fastconv call the adapter makes, alone"
    )
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds

    from threadpoolctl import threadpool_limits

    import fastconv
    from fastconv.compat import dezero as fdz

    dz = fdz.import_dezero()  # DeZero itself (PyPI's 0.0.13 needs the NumPy 2 shim to import)
    FC, Variable = dz.functions_conv, dz.Variable

    threadpool_limits(limits=args.threads, user_api="blas")
    fastconv.configure(threads=args.threads)
    if args.backend == "numba":
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    rng = np.random.default_rng(0)
    chosen = {c for c in args.cases.split(",") if c}
    rows = []
    load = os.getloadavg()
    print(
        f"threads {args.threads}, fastconv backend {args.backend}, float32, median of {rounds} interleaved rounds; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs ({platform.machine()}), "
        f"NumPy {np.__version__}, Python {sys.version.split()[0]}"
    )
    if args.quick:
        print(
            "--quick: shapes shrunk to batch 2, at most 4 channels and 12x12 (the labels keep the full sizes)"
        )
    print()
    print(
        "| case | what | DeZero fwd ms | adapter fwd ms | DeZero bwd ms | adapter bwd ms "
        "| DeZero fwd+bwd ms | adapter fwd+bwd ms | speedup |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with fastconv.use_backend(args.backend):
        for case, what, fn, xs, ws, kw in CASES:
            if chosen and case not in chosen:
                continue
            if args.quick:  # batch 2, at most 4 channels, at most 12x12
                xs = (2, min(xs[1], 4), min(xs[2], 12), min(xs[3], 12))
                ws = None if ws is None else (min(ws[0], 4), min(ws[1], 4), *ws[2:])
            arrays: dict[str, Any] = {"x": rng.standard_normal(xs, dtype=np.float32), "W": None, "b": None}
            if ws is not None:
                arrays["W"] = (rng.standard_normal(ws, dtype=np.float32) * 0.1).astype(np.float32)
                arrays["b"] = rng.standard_normal(ws[1] if fn == "deconv2d" else ws[0], dtype=np.float32)
            out_shape = _call(FC, fn, Variable(arrays["x"]), arrays["W"], arrays["b"], kw).shape
            arrays["gy"] = rng.standard_normal(out_shape, dtype=np.float32)
            sides = (FC, fdz)
            for side in sides:  # warm-up: numba compiles, caches fill
                _sample(side, fn, arrays, kw, Variable)
            samples: list[list[tuple[float, float]]] = [[], []]
            for _ in range(rounds):
                for side, store in zip(sides, samples):
                    store.append(_sample(side, fn, arrays, kw, Variable))
            med = [
                (
                    1e3 * statistics.median(f for f, _ in s),
                    1e3 * statistics.median(b for _, b in s),
                    1e3 * statistics.median(f + b for f, b in s),
                )
                for s in samples
            ]
            speedup = med[0][2] / med[1][2]
            print(
                f"| {case} | {what} | {med[0][0]:.2f} | {med[1][0]:.2f} | {med[0][1]:.2f} | {med[1][1]:.2f} "
                f"| {med[0][2]:.2f} | {med[1][2]:.2f} | {speedup:.2f}x |"
            )
            rows.append(
                {
                    "case": case,
                    "what": what,
                    "x": list(xs),
                    "W": None if ws is None else list(ws),
                    "dezero_ms": {"forward": med[0][0], "backward": med[0][1], "total": med[0][2]},
                    "adapter_ms": {"forward": med[1][0], "backward": med[1][1], "total": med[1][2]},
                    "speedup": speedup,
                }
            )
            if args.parts:
                parts = _kernel_parts(fastconv, fdz, fn, arrays, kw)
                for call in parts.values():
                    call()
                timed = {}
                for name, call in parts.items():
                    times = []
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t0)
                    timed[name] = 1e3 * statistics.median(times)
                rows[-1]["adapter_parts_ms"] = timed
    if args.parts:
        print()
        print("| case | adapter fwd+bwd ms | fastconv call (alone) | ms | share |")
        print("| --- | ---: | --- | ---: | ---: |")
        for row in rows:
            total = row["adapter_ms"]["total"]
            parts_ms = row["adapter_parts_ms"]
            for name, ms in parts_ms.items():
                print(f"| {row['case']} | {total:.2f} | {name} | {ms:.2f} | {ms / total:.0%} |")
            rest = total - sum(parts_ms.values())
            print(
                f"| {row['case']} | {total:.2f} | rest: DeZero graph, Variables, copies | {rest:.2f} | {rest / total:.0%} |"
            )
    if args.json is not None:
        meta = {
            "threads": args.threads,
            "backend": args.backend,
            "rounds": rounds,
            "quick": args.quick,
            "loadavg_start": load,
            "loadavg_end": os.getloadavg(),
            "numpy": np.__version__,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
