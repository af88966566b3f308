"""Numba backend vs PyTorch CPU (torch.nn.functional), as ratios measured in one process.

Temporary measurement script for issue 3 (``fastconv bench`` supersedes it)::

    python benchmarks/numba_vs_torch.py [--threads 2] [--dtype float32 float64] [--repeat 7] [--only S1 P2]

Forward and backward (dx, dW, db) are timed separately; each figure is the median of
``--repeat`` timed calls after warm-up calls, numba and torch interleaved, with a pause of
``--gap-ms`` before each call. ``ratio`` = numba time / torch time (< 1: numba faster).
Case ``T1`` is one whole training step (forward + backward, no update) of the Keras-style MNIST
network Conv2D(32, 3x3, relu) - MaxPooling2D(2) - Conv2D(64) - MaxPooling2D - Conv2D(64) - Flatten -
Dense(64, relu) - Dense(10, softmax) on a batch of 64: ``fastconv.train.keras.Sequential`` on numba
vs the same network in torch eager (torch.nn, cross-entropy loss, ``loss.backward()``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

CONV = {
    "S1": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),
    "S2": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 0),
    "S3": ((64, 32, 13, 13), (64, 32, 3, 3), 1, 0),
    "S4": ((64, 64, 32, 32), (64, 64, 3, 3), 1, 1),
    "S5": ((32, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    "S6": ((32, 64, 56, 56), (128, 64, 3, 3), 2, 1),
}
POOL = {
    "P1": ((64, 32, 26, 26), 2, 2, 0),
    "P2": ((64, 64, 32, 32), 2, 2, 0),
    "P3": ((32, 64, 56, 56), 3, 2, 1),
}


# Pause before each timed call: torch's OpenMP threads (and OpenBLAS's) spin-wait for a while after
# a call returns; without the pause they held both cores during the next (numba) call, which then
# took up to 2x longer (measured: P3 max pool forward 24.8 ms right after torch, 11 ms alone).
GAP_S = 0.005


def timeit(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after two warm-up calls."""
    return pair_timeit(fn, None, repeat)[0]


def pair_timeit(fa, fb, repeat: int) -> tuple[float, float]:
    """Medians of ``repeat`` calls of ``fa`` and ``fb``, interleaved (a, b, a, b, ...) after two
    warm-up calls each, so that a burst of load from other processes hits both sides alike."""
    fns = [f for f in (fa, fb) if f is not None]
    for f in fns:
        f()
        f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for f, ts in zip(fns, times):
            time.sleep(GAP_S)  # let the other side's spinning threads (OpenMP, OpenBLAS) go idle
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    meds = [statistics.median(ts) for ts in times]
    return meds[0], (meds[1] if fb is not None else 0.0)


def row(case: str, dtype: str, op: str, a: float, c: float, flops: float | None = None) -> None:
    rate = f"  {flops / a / 1e9:7.1f}" if flops else ""
    print(f"{case:4s} {dtype:7s} {op:4s} {a * 1e3:9.2f} {c * 1e3:9.2f} {a / c:6.2f}{rate}", flush=True)


def bench_conv(case, spec, dtype, rng, repeat, nb, torch, F) -> None:
    xs, ws, s, p = spec
    one = (1, 1)
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    st, pd = (s, s), (p, p)
    y = nb.conv2d_forward(x, W, b, st, pd, one)
    dout = rng.standard_normal(y.shape).astype(dtype)
    tx, tW, tb, td = (torch.from_numpy(a) for a in (x, W, b, dout))
    ref = F.conv2d(tx, tW, tb, s, p).numpy()
    err = np.abs(ref - y).max() / np.abs(ref).max()
    flops = 2 * y.size * ws[1] * ws[2] * ws[3]

    def t_back():
        return torch.ops.aten.convolution_backward(
            td, tx, tW, [ws[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, True]
        )

    f_nb, f_t = pair_timeit(
        lambda: nb.conv2d_forward(x, W, b, st, pd, one), lambda: F.conv2d(tx, tW, tb, s, p), repeat
    )
    b_nb, b_t = pair_timeit(lambda: nb.conv2d_backward(dout, x, W, st, pd, one, True), t_back, repeat)
    got = nb.conv2d_backward(dout, x, W, st, pd, one, True)
    berr = max(np.abs(u - v.numpy()).max() / np.abs(v.numpy()).max() for u, v in zip(got, t_back()))
    row(case, dtype, "fwd", f_nb, f_t, flops)
    row(case, dtype, "bwd", b_nb, b_t, 2 * flops)
    row(case, dtype, "f+b", f_nb + b_nb, f_t + b_t, 3 * flops)
    if err > 1e-4 or berr > 1e-3:
        print(f"  !! mismatch vs torch: forward {err:.2e}, backward {berr:.2e}")


def bench_pool(case, spec, dtype, rng, repeat, nb, torch, F) -> None:
    xs, k, s, p = spec
    one, st, pd = (1, 1), (s, s), (p, p)
    x = rng.standard_normal(xs).astype(dtype)
    y, am = nb.maxpool2d_forward(x, k, k, st, pd, one)
    dout = rng.standard_normal(y.shape).astype(dtype)
    tx, td = torch.from_numpy(x), torch.from_numpy(dout)
    ty, ti = F.max_pool2d(tx, k, s, p, return_indices=True)
    assert np.array_equal(ty.numpy(), y)
    f_nb, f_t = pair_timeit(
        lambda: nb.maxpool2d_forward(x, k, k, st, pd, one),
        lambda: F.max_pool2d(tx, k, s, p, return_indices=True),
        repeat,
    )
    b_nb, b_t = pair_timeit(
        lambda: nb.maxpool2d_backward(dout, am, xs, k, k, st, pd, one),
        lambda: torch.ops.aten.max_pool2d_with_indices_backward(
            td, tx, [k, k], [s, s], [p, p], [1, 1], False, ti
        ),
        repeat,
    )
    row(case, dtype, "fwd", f_nb, f_t)
    row(case, dtype, "bwd", b_nb, b_t)


def bench_train(case, dtype, rng, repeat, torch) -> None:
    """One training step (forward + backward) of the Keras-style MNIST network, batch 64."""
    from fastconv.train.keras import Conv2D, Dense, Flatten, MaxPooling2D, Sequential

    model = Sequential(
        [
            Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"),
            Flatten(),
            Dense(64, activation="relu"),
            Dense(10, activation="softmax"),
        ],
        backend="numba",
        dtype=dtype,
        seed=0,
    )
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = rng.random((64, 1, 28, 28)).astype(dtype)
    t = rng.integers(0, 10, 64)
    model.build()
    nn = torch.nn
    tdt = getattr(torch, dtype)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(576, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).to(tdt)
    tx, tt = torch.from_numpy(x), torch.from_numpy(t)
    loss_fn = nn.CrossEntropyLoss()

    def t_step():
        net.zero_grad(set_to_none=True)
        loss_fn(net(tx), tt).backward()

    n_step, t_s = pair_timeit(lambda: model.loss_and_gradient(x, t), t_step, repeat)
    row(case, dtype, "step", n_step, t_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", nargs="+", default=None, help="case names, e.g. S1 P2 T1")
    ap.add_argument("--chunk-mib", type=float, default=None, help="override numba_backend.CHUNK_BYTES")
    ap.add_argument(
        "--gemm", choices=["auto", "split", "blas"], default=None, help="override numba_backend.GEMM_THREADS"
    )
    ap.add_argument("--gap-ms", type=float, default=5.0, help="pause before each timed call")
    ap.add_argument("--wide-max-p", type=int, default=None, help="override numba_backend.WIDE_MAX_P")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from fastconv.backends import numba_backend as nb

    if args.gemm is not None:
        nb.GEMM_THREADS = args.gemm
    global GAP_S
    GAP_S = args.gap_ms / 1e3
    if args.wide_max_p is not None:
        nb.WIDE_MAX_P = args.wide_max_p
    if args.chunk_mib is not None:
        nb.CHUNK_BYTES = int(args.chunk_mib * 2**20)
    torch.set_num_threads(args.threads)
    nb.set_threads(args.threads)
    t = time.perf_counter()
    nb.warmup()
    warm = time.perf_counter() - t
    info = nb.info()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()} "
        f"python {platform.python_version()} torch {torch.__version__} numba {info['numba']} "
        f"threads {args.threads} (torch {torch.get_num_threads()}); numba warmup {warm:.2f} s"
    )
    print(f"# layer {info['threading layer']}; numba threads {info['numba threads']}; blas {info['blas']}")
    print(f"# {' '.join(sys.argv)}")
    print(
        f"{'case':4s} {'dtype':7s} {'op':4s} {'numba ms':>9s} {'torch ms':>9s} {'ratio':>6s}  {'GFLOP/s':>7s}"
    )
    rng = np.random.default_rng(0)
    for dtype in args.dtype:
        for case, spec in CONV.items():
            if not args.only or case in args.only:
                bench_conv(case, spec, dtype, rng, args.repeat, nb, torch, F)
        for case, spec in POOL.items():
            if not args.only or case in args.only:
                bench_pool(case, spec, dtype, rng, args.repeat, nb, torch, F)
        if not args.only or "T1" in args.only:
            bench_train("T1", dtype, rng, args.repeat, torch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
