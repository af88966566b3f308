"""The ``fastconv`` command: ``info``, ``warmup``, ``train`` and ``bench``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence

USAGE = """usage: fastconv {info,warmup,train,bench} [options]

  info     backends, availability, versions, threads and devices
  warmup   compile every JIT kernel ahead of time (numba), for both dtypes
  train    train a small CNN (digits by default, MNIST with --dataset mnist --data DIR)
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
    if command == "bench":
        from fastconv.bench import main as bench_main

        return bench_main(rest)
    print(f"fastconv: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
