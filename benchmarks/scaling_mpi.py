"""Data-parallel training throughput over MPI: images/s for 1, 2 and 4 ranks, and the allreduce's share.

Each rank count is one ``mpiexec -n R`` job (the venv's own mpiexec, on this machine) running this script
with ``--worker``: the network of ``fastconv train --model simple --dataset mnist`` (the book's
SimpleConvNet: conv 30x5x5 - relu - pool - affine 100 - relu - affine 10, 433,890 parameters, so a
1.7 MB float32 gradient buffer) on synthetic 28x28 images, Adam, the loop of ``fastconv train``
(:func:`fastconv.train.loop.train_epoch` with the MPI communicator), one global batch of ``--batch``
images per step split over the ranks. One warm-up epoch of ``--warmup`` steps (JIT compilation, the
first allreduce), then a timed epoch of ``--steps`` steps started after a barrier; throughput is the
images of the timed epoch over the slowest rank's seconds. ``allreduce share``: the seconds inside the
gradient averaging (packing the fused buffer, ``MPI_Allreduce``, dividing; the ``MPI_Allreduce`` alone
in brackets), over the step's seconds, averaged over the ranks. A rank's numba/BLAS threads are the
cores over the ranks (at least 1): more ranks than cores oversubscribe the machine, and the table says
so. The time a rank waits in the allreduce for slower ranks counts as allreduce time.

Usage::

    python benchmarks/scaling_mpi.py [--ranks 1,2,4] [--batch 128] [--steps 40] [--backend numba]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker(args: argparse.Namespace) -> None:
    """One rank of a job: warm up, time ``--steps`` steps, write the numbers (rank 0)."""
    import fastconv
    from fastconv.distributed import DistributedOptimizer, create_communicator
    from fastconv.train import loop
    from fastconv.train.networks import SimpleConvNet
    from fastconv.train.optimizers import Adam

    comm = create_communicator("auto")
    threads = max(1, _cores() // comm.local_size)
    fastconv.configure(threads=threads)
    dtype = np.dtype(args.dtype)
    with fastconv.use_backend(args.backend):
        backend = fastconv.get_backend()
        model = SimpleConvNet((1, 28, 28), backend=backend, dtype=dtype, rng=np.random.default_rng(0))
        optimizer = DistributedOptimizer(Adam(0.001), comm)
        comm.bcast_params(model.params)
        rng = np.random.default_rng(1)  # every rank: the same data, as fastconv train loads it
        n = args.batch * max(args.steps, args.warmup)
        x = rng.random((n, 1, 28, 28)).astype(dtype)
        t = rng.integers(0, 10, n)

        def place(a: np.ndarray) -> object:
            return fastconv.to_device(np.ascontiguousarray(a), backend)

        def epoch(steps: int) -> float:
            order = np.arange(steps * args.batch)
            comm.barrier()
            start = time.perf_counter()
            loop.train_epoch(
                model,
                optimizer,
                x,
                t,
                args.batch,
                place=place,
                communicator=comm,
                order=order,
                accuracy=False,
            )
            return time.perf_counter() - start

        epoch(args.warmup)
        comm.reset_stats()
        seconds = epoch(args.steps)
    stats = comm.allgather_object({"seconds": seconds, **comm.stats})
    if comm.is_root:
        slowest = max(s["seconds"] for s in stats)
        doc = {
            "ranks": comm.size,
            "threads_per_rank": threads,
            "images_per_s": args.steps * args.batch / slowest,
            "step_ms": 1e3 * slowest / args.steps,
            "average_share": float(np.mean([s["average_seconds"] / s["seconds"] for s in stats])),
            "reduce_share": float(np.mean([s["reduce_seconds"] / s["seconds"] for s in stats])),
            "average_ms": 1e3 * float(np.mean([s["average_seconds"] for s in stats])) / args.steps,
            "buffer_bytes": int(stats[0]["bytes"] / max(1, stats[0]["steps"])),
            "parameters": int(sum(int(np.prod(p.shape)) for p in model.params.values())),
            "backend": backend,
        }
        Path(args.json).write_text(json.dumps(doc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    p.add_argument("--batch", type=int, default=128, help="global batch (images per step, all ranks)")
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT compilation)")
    p.add_argument("--backend", default="numba")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.is_file():
        print(f"no mpiexec next to {sys.executable}: pip install 'fastconv[mpi]'", file=sys.stderr)
        return 2
    cores = _cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (int(r) for r in args.ranks.split(",")):
            out = Path(tmp, f"{ranks}.json")
            cmd = [str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--worker", "--json", str(out)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--backend", args.backend, "--dtype", args.dtype]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(out.read_text()))
    base = rows[0]["images_per_s"] if rows and rows[0]["ranks"] == 1 else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    first, last = rows[0], rows[-1]
    print(
        f"SimpleConvNet 28x28 ({first['parameters']:,} parameters, {last['buffer_bytes'] / 1e6:.2f} MB "
        f"fused gradient buffer), {args.dtype}, backend {first['backend']}, Adam, global batch {args.batch}, "
        f"{args.steps} timed steps; {cores} cores, {platform.processor() or platform.machine()}; "
        f"load average at the end {load:.2f}"
    )
    print()
    print(
        "| ranks | threads/rank | images/s | speed-up | ms/step | allreduce ms/step | allreduce share | note |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        speedup = f"{row['images_per_s'] / base:.2f}x" if base else "-"
        note = f"oversubscribed: {row['ranks']} ranks on {cores} cores" if row["ranks"] > cores else ""
        share = f"{100 * row['average_share']:.1f}% ({100 * row['reduce_share']:.1f}%)"
        if row["ranks"] == 1:
            share, note = "0 (no allreduce)", note or "one rank: no communication"
        print(
            f"| {row['ranks']} | {row['threads_per_rank']} | {row['images_per_s']:,.0f} | {speedup} | "
            f"{row['step_ms']:.1f} | {row['average_ms']:.2f} | {share} | {note} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
