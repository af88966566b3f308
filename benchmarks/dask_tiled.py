"""Tiled conv2d and batch predict on Dask against in-memory fastconv (BENCHMARKS.md, "Scale-out").

    python benchmarks/dask_tiled.py                      # (1, 3, 4096, 4096) in 1024x1024 tiles, 3x3 conv
    python benchmarks/dask_tiled.py --size 512 --tile 256 --images 512 --workers 0   # a quick look

Tiled conv2d of one (1, C, S, S) image in TxT tiles (``--pad same``, ``--algorithm``), timed as:
in memory (``fastconv.conv2d`` of the whole image, numba/BLAS on every core); on the synchronous scheduler
(one tile at a time, each with every core); on the threaded scheduler (one tile per core, kernels one thread
each); on a ``fastconv.dask.local_cluster`` of ``--workers`` processes (the image made on the workers by
``dask.array.random``, the output left there with ``persist``: no transfers through this process). Then
``predict`` of a SimpleConvNet over ``--images`` 28x28 images, the same ways. Prints a markdown table,
the command and the machine's load (``uptime``): on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np


def _best(fn: Any, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn`` after one warm-up run (seconds)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable: load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="image height and width (default 4096)")
    p.add_argument("--tile", type=int, default=1024, help="tile height and width (default 1024)")
    p.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--filters", type=int, default=8, help="output channels (default 8)")
    p.add_argument("--kernel", type=int, default=3, help="kernel size (default 3)")
    p.add_argument("--algorithm", default=None, help="conv algorithm (default: auto, per tile)")
    p.add_argument("--images", type=int, default=8192, help="images for predict (default 8192)")
    p.add_argument("--chunk", type=int, default=1024, help="images per predict task (default 1024)")
    p.add_argument("--batch-size", type=int, default=256, help="images per model call (default 256)")
    p.add_argument(
        "--workers", type=int, default=2, help="LocalCluster workers; 0 skips the cluster (default 2)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (default 3)")
    args = p.parse_args(argv)

    import dask
    import dask.array as da

    import fastconv
    import fastconv.dask as fdask
    from fastconv.train.networks import SimpleConvNet

    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    shape = (1, args.channels, args.size, args.size)
    x = rng.standard_normal(shape, dtype=np.float32)
    W = (rng.standard_normal((args.filters, args.channels, args.kernel, args.kernel)) * 0.1).astype(
        np.float32
    )
    b = rng.standard_normal(args.filters).astype(np.float32)
    chunks = (1, args.channels, args.tile, args.tile)
    dx = da.from_array(x, chunks=chunks)
    mpix = args.size * args.size / 1e6
    conv = {"pad": "same", "algorithm": args.algorithm}
    rows: list[tuple[str, str, float, str]] = []

    def conv_row(where: str, seconds: float) -> None:
        rows.append(
            (
                "tiled conv2d" if where != "in memory" else "conv2d",
                where,
                seconds,
                f"{mpix / seconds:.1f} Mpixel/s",
            )
        )

    ref = fastconv.conv2d(x, W, b, **conv)
    conv_row("in memory", _best(lambda: fastconv.conv2d(x, W, b, **conv), args.repeat))
    with dask.config.set(scheduler="synchronous"):
        y = fdask.conv2d(dx, W, b, **conv)
        tiled = y.compute()
        conv_row("synchronous", _best(y.compute, args.repeat))
    diff = float(np.abs(tiled - ref).max()) / float(np.abs(ref).max())
    bitwise = bool(np.array_equal(tiled, ref))
    tile_shape = (1, args.channels, args.tile + args.kernel - 1, args.tile + args.kernel - 1)
    algorithms = [
        fastconv.conv_algorithm(s, W.shape, 1, p, dtype="float32")
        for s, p in ((shape, "same"), (tile_shape, 0))
    ]
    with dask.config.set(scheduler="threads", num_workers=cores), fastconv.configure(threads=1):
        conv_row(f"threads x{cores} (kernels 1 thread)", _best(y.compute, args.repeat))

    images = rng.random((args.images, 1, 28, 28), dtype=np.float32)
    model = SimpleConvNet((1, 28, 28), weight_init_std="he", dtype=np.float32, rng=1)
    bs = args.batch_size

    def in_memory_predict() -> np.ndarray:
        return np.concatenate([model.predict(images[i : i + bs]) for i in range(0, len(images), bs)])

    def predict_row(where: str, seconds: float) -> None:
        rows.append(("predict", where, seconds, f"{args.images / seconds:,.0f} images/s"))

    predict_row("in memory", _best(in_memory_predict, args.repeat))
    dimages = da.from_array(images, chunks=(args.chunk, 1, 28, 28))
    with dask.config.set(scheduler="synchronous"):
        yp = fdask.predict(model, dimages, batch_size=bs)
        predict_row("synchronous", _best(yp.compute, args.repeat))
    with dask.config.set(scheduler="threads", num_workers=cores), fastconv.configure(threads=1):
        predict_row(f"threads x{cores} (kernels 1 thread)", _best(yp.compute, args.repeat))

    if args.workers > 0:
        from distributed import Client, wait

        start = time.perf_counter()
        with fdask.local_cluster(args.workers) as cluster, Client(cluster) as client:
            startup = time.perf_counter() - start
            where = f"LocalCluster {args.workers} workers x 1 thread"
            xr = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
            xr = client.persist(xr)
            wait(xr)

            # Each run builds its graph anew (new keys: the cluster keeps no result of an earlier run) and
            # leaves the output on the workers.
            def conv_on_cluster() -> None:
                wait(client.persist(fdask.conv2d(xr, W, b, **conv)))

            conv_row(where, _best(conv_on_cluster, args.repeat))
            # the images made on the workers, as a data set read there would be
            ic = da.random.default_rng(1).random((args.images, 1, 28, 28), chunks=(args.chunk, 1, 28, 28))
            ic = client.persist(ic.astype(np.float32))
            wait(ic)

            def predict_on_cluster() -> None:
                wait(client.persist(fdask.predict(model, ic, batch_size=bs)))

            predict_row(where, _best(predict_on_cluster, args.repeat))
    print(f"command: python benchmarks/dask_tiled.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; {_uptime()}")
    print(
        f"conv2d: x {shape} float32 in {args.tile}x{args.tile} tiles, W {W.shape}, pad 'same', "
        f"algorithm {args.algorithm or 'auto'} (the whole image: {algorithms[0]}, an inner tile: {algorithms[1]}); "
        f"tiled (synchronous) vs in memory: max|diff| / max|y| {diff:.2g}{' (bit for bit)' if bitwise else ''}"
    )
    print(
        f"predict: SimpleConvNet (1, 28, 28) float32, {args.images} images, {args.chunk} per task, batch {bs}"
    )
    if args.workers > 0:
        print(f"LocalCluster startup: {startup:.2f} s")
    print()
    print(f"| what | where | best of {args.repeat} (s) | throughput |")
    print("|---|---|---|---|")
    for what, where, seconds, rate in rows:
        print(f"| {what} | {where} | {seconds:.3f} | {rate} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
