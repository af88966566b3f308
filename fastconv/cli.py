"""The ``fastconv`` command: ``info``, ``warmup``, ``train``, ``predict`` and ``bench``."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

USAGE = """usage: fastconv {info,warmup,train,predict,bench} [options]

  info     backends, availability, versions, threads and devices
  warmup   compile every JIT kernel ahead of time (numba), for both dtypes
  train    train a small CNN (digits by default, MNIST with --dataset mnist --data DIR)
  predict  run a trained network over an .npy/Zarr stack or a folder of images, on Dask
  bench    time the kernels on the benchmark shapes across backends (and PyTorch if installed)

Run `fastconv COMMAND --help` for a command's options."""


def info(argv: Sequence[str]) -> int:
    """``fastconv info``: versions, platform, and each backend's availability and details; the exit status."""
    argparse.ArgumentParser(
        prog="fastconv info", description="Show backends and their environment."
    ).parse_args(argv)
    import numpy as np

    import fastconv
    from fastconv import _registry

    print(f"fastconv {fastconv.__version__}  python {platform.python_version()}  numpy {np.__version__}")
    print(f"platform {platform.platform()}  cpus {os.cpu_count()}")
    env = os.environ.get(_registry.ENV_VAR)
    print(f"{_registry.ENV_VAR}={env!r}" if env else f"{_registry.ENV_VAR} is unset (auto)")
    settings = ", ".join(f"{k}={v!r}" for k, v in fastconv.get_config().items())
    print(f"settings (fastconv.configure): {settings}")
    for name, status in fastconv.list_backends().items():
        if status["available"]:
            print(f"\n[{name}] available")
            backend = fastconv.get_backend_object(name)
            details = backend.info() if hasattr(backend, "info") else {}
            for key, value in details.items():
                print(f"  {key}: {value}")
            if hasattr(backend, "algorithms"):
                _print_algorithms(name, backend)
        else:
            print(f"\n[{name}] unavailable: {status['reason']}")
    try:
        print(f"\nactive backend for a NumPy array: {fastconv.get_backend(np.zeros(1))}")
    except (ValueError, RuntimeError) as exc:
        print(f"\nactive backend: error: {exc}")
        return 1
    return 0


def _print_algorithms(name: str, backend: object) -> None:
    """The convolution algorithms a backend has, and what "auto" (or autotuning) runs on the benchmark
    shapes under the current settings."""
    import fastconv
    from fastconv.bench.cases import CASES, ConvCase

    print(f"  algorithms: {', '.join(backend.algorithms)}")  # type: ignore[attr-defined]
    print("  what runs on the benchmark shapes (forward / backward, float32 | float64):")
    for case in CASES:
        if isinstance(case, ConvCase):
            picks = [
                " / ".join(
                    fastconv.conv_algorithm(
                        case.x_shape,
                        case.w_shape,
                        case.stride,
                        case.pad,
                        dtype=dtype,
                        direction=d,
                        backend=name,
                    )
                    for d in ("forward", "backward")
                )
                for dtype in ("float32", "float64")
            ]
            print(f"    {case.name} {case.describe():<36} {picks[0]} | {picks[1]}")


def warmup(argv: Sequence[str]) -> int:
    """``fastconv warmup``: compile (or load from the cache) every JIT kernel; the exit status."""
    parser = argparse.ArgumentParser(
        prog="fastconv warmup", description="Compile every kernel of the JIT backends ahead of time."
    )
    parser.add_argument(
        "--backend", action="append", help="backend(s) to warm up (default: every available one)"
    )
    args = parser.parse_args(argv)
    import fastconv

    statuses = fastconv.list_backends()
    names = args.backend or [n for n, s in statuses.items() if s["available"]]
    failed = 0
    for name in names:
        try:
            backend = fastconv.get_backend_object(name)
        except (ValueError, RuntimeError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if not hasattr(backend, "warmup"):
            print(f"{name}: nothing to compile")
            continue
        print(
            f"{name}: compiling every kernel for float32 and float64 "
            "(12-14 s on 2 cores the first time; later runs load numba's on-disk cache)",
            flush=True,
        )
        start = time.perf_counter()
        backend.warmup()
        seconds = time.perf_counter() - start
        print(f"{name}: every kernel ready (compiled, or loaded from the on-disk cache) in {seconds:.2f} s")
    return 1 if failed else 0


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastconv predict",
        description="Run a network trained by `fastconv train` over a stack or a folder of images, on Dask: "
        "in this process by default, on a local cluster with --workers N, or on a running scheduler with "
        "--dask ADDRESS. Writes the class probabilities (.npy, (N, K)) or a CSV (index, file, label, "
        "probability, p_0..p_K-1).",
    )
    p.add_argument(
        "model_path",
        metavar="MODEL",
        help="the `fastconv train --out DIR` directory (its checkpoint.npz), a checkpoint file, or a "
        "parameter file such as DIR/model.npz (with --model)",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="an .npy stack (N, H, W) or (N, C, H, W), a Zarr array, or a folder of images (.png, .jpg, ... "
        "read as grayscale, or .npy files, one image each)",
    )
    p.add_argument(
        "--out", metavar="FILE", default="predictions.csv", help=".npy or .csv (default predictions.csv)"
    )
    p.add_argument(
        "--model",
        dest="model_kind",
        choices=("simple", "keras", "separable"),
        default=None,
        help="the network of a parameter file (a checkpoint names its own)",
    )
    p.add_argument("--component", default=None, help="the array inside a Zarr group")
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="divide the pixels by this (default: 255 for integer pixels, 1 for floats, as in training)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per model call (default 256)")
    p.add_argument("--chunk", type=int, default=2048, help="images per Dask task (default 2048)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="a running Dask scheduler, e.g. tcp://host:8786 (its workers read INPUT themselves: the path must "
        "be readable there too)",
    )
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start a local cluster of N worker processes (127.0.0.1) for this run",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        metavar="T",
        help="with --workers: task threads per worker, and its numba/BLAS threads (default 1)",
    )
    p.add_argument(
        "--backend", default=None, help="fastconv backend (numpy, numba, cupy; default auto, on each worker)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _softmax(z: Any) -> Any:
    import numpy as np

    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _write_predictions(path: Any, probs: Any, names: Sequence[str] | None) -> None:
    """probs (N, K) as .npy, or a CSV: index, file, label, probability (of the label), p_0..p_K-1."""
    import csv
    import io

    import numpy as np

    from fastconv.train._io import atomic_write

    if path.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, probs)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    k = probs.shape[1] if probs.ndim == 2 else 0
    writer.writerow(["index", "file", "label", "probability", *(f"p_{j}" for j in range(k))])
    labels = probs.argmax(axis=1) if k else np.zeros(len(probs), dtype=np.int64)
    for i, row in enumerate(probs):
        writer.writerow(
            [
                i,
                names[i] if names else "",
                int(labels[i]),
                f"{row[labels[i]]:.6g}",
                *(f"{v:.6g}" for v in row),
            ]
        )
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _run_predict(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):
        raise ValueError(f"--out must end in .npy or .csv, got {args.out!r}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: no such directory: {out.parent}")
    for name in ("batch_size", "chunk", "threads_per_worker"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.scale is not None and not args.scale > 0:
        raise ValueError(f"--scale must be positive, got {args.scale}")
    import fastconv.dask as fdask

    x, names = fdask.read_images(args.input, args.chunk, mode="L", component=args.component)
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W): one channel
    if x.ndim != 4:
        raise ValueError(
            f"input: {args.input} holds an array of shape {x.shape}; fastconv predict takes images (N, H, W) "
            "or (N, C, H, W)"
        )
    model, info = fdask.load_model(args.model_path, args.model_kind, tuple(x.shape[1:]), args.backend)
    scale = args.scale if args.scale is not None else (255.0 if x.dtype.kind in "iub" else 1.0)
    dtype = np.dtype(info["dtype"])
    x = x.astype(dtype)
    if scale != 1.0:
        x = x / dtype.type(scale)  # as training prepared its pixels: float, then divided
    cluster = client = None
    try:
        if args.workers is not None:
            from distributed import Client

            cluster = fdask.local_cluster(args.workers, args.threads_per_worker)
            client = Client(cluster)
            where = f"a local cluster of {args.workers} workers x {args.threads_per_worker} thread(s)"
        elif args.dask is not None:
            client, _ = fdask.get_client(args.dask)
            where = f"the scheduler at {args.dask}"
        else:
            where = "this process (synchronous scheduler)"
        print(
            f"{info['kind']} model from {info['path']} ({info['dtype']}); {x.shape[0]:,} images "
            f"{tuple(x.shape[1:])} from {args.input} in {len(x.chunks[0])} task(s), on {where}",
            flush=True,
        )
        import dask

        start = time.perf_counter()
        # in this process: one task at a time, each kernel on every core (numba's and BLAS's threads)
        local = dask.config.set(scheduler="synchronous") if client is None else contextlib.nullcontext()
        with local:
            y = fdask.predict(
                model,
                x,
                batch_size=args.batch_size,
                client=client,
                compute=True,
                progress=not args.no_progress,
            )
        seconds = time.perf_counter() - start
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    probs = (_softmax(y) if info["outputs"] == "logits" else np.asarray(y, dtype=np.float64)).astype(
        np.float32
    )
    _write_predictions(out, probs, names)
    counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) if len(probs) else np.zeros(0, int)
    print(
        f"predicted {len(probs):,} images in {seconds:.2f} s ({len(probs) / max(seconds, 1e-9):,.0f} images/s); "
        f"labels {dict(enumerate(int(c) for c in counts))}; wrote {out}",
        flush=True,
    )


def predict(argv: Sequence[str]) -> int:
    """``fastconv predict MODEL INPUT``: batch inference on Dask; the exit status (2 for an error)."""
    parser = _predict_parser()
    args = parser.parse_args(argv)
    from fastconv.train._io import one_line

    try:
        _run_predict(args)
    except (FileNotFoundError, ValueError, TypeError, OSError, ModuleNotFoundError) as exc:
        print(f"fastconv predict: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nfastconv predict: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastconv`` command: dispatch to a subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        return info(rest)
    if command == "warmup":
        return warmup(rest)
    if command == "train":
        from fastconv.train import main as train_main

        return train_main(rest)
    if command == "predict":
        return predict(rest)
    if command == "bench":
        from fastconv.bench import main as bench_main

        return bench_main(rest)
    print(f"fastconv: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
