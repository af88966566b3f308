"""``fastconv bench``: time the benchmark cases on every backend, with PyTorch as a peer.

For each case of :mod:`fastconv.bench.cases` (convolutions S1-S6, max pools P1-P3, training steps
T1-T2; the conv family's layers: depthwise D1-D2, transposed X1, average pools A1-A2, global average
G1, the channels-last twins S4-NHWC, D1-NHWC, P2-NHWC, and the SeparableConvNet step T3) and each peer (the chosen fastconv backends, plus ``numba[ALG]`` for each ``--algorithm``,
plus ``torch`` on the CPU when PyTorch is installed, plus ``torch-cuda`` when it sees a GPU, plus
``jax`` on the CPU when JAX is installed), it times the forward pass and the backward pass
separately:

* conv forward ``conv2d(x, W, b, stride, pad)``; backward ``conv2d_backward`` -> (dx, dW, db)
  (PyTorch: ``F.conv2d`` and ``aten.convolution_backward`` with all three gradients);
* pool forward ``max_pool2d`` -> (y, argmax); backward ``max_pool2d_backward`` -> dx
  (PyTorch: ``aten.max_pool2d_with_indices`` and its backward);
* the conv family's layers: ``conv2d(groups=)``, ``conv_transpose2d``, ``avg_pool2d``,
  ``global_avg_pool2d`` and their backwards (PyTorch: the same ops of ``torch.nn.functional`` and
  their ``aten`` backwards); an ``-NHWC`` case runs every peer channels-last, and a last table gives
  each peer's NHWC / NCHW ratio against the case's twin;
* training step: forward, backward and optimizer update of SimpleConvNet (T1), the Keras-style
  network (T2) or SeparableConvNet (T3) (PyTorch: the same network, loss and optimizer; JAX: the
  same as one jitted step).

PyTorch runs in its fastest variant for each kind of case unless ``--torch-variant`` says otherwise
(channels_last memory format, ``torch.compile``, fused optimizer, oneDNN off; several variants are
timed side by side as ``torch[V]``; :mod:`fastconv.bench.peers`), and each row records the variant.
JAX calls are ``jax.jit``-compiled (the warm-up compiles them) and wait with ``block_until_ready``.
Each fastconv convolution row records the algorithm that ran (``fastconv.conv_algorithm``), shown
in the table cell; ``--algorithm gemm,winograd`` times numba once per forced algorithm, and a shape
an algorithm cannot run shows ``n/s``.

Timing (:mod:`fastconv.bench.timing`): ``warmup`` calls (compiles JIT kernels, warms caches), then
``repeat`` samples, the peers' samples interleaved round by round, so that load from other
processes falls on every peer alike; a sample loops the call enough times to last ``min_time``
seconds, and the reported figure is the median time per call. A call shorter than ``min_time`` gets
one untimed call before each sample, because the previous peer's threads go on spinning for a few
ms after it returns (PyTorch's OpenMP pool) and would slow the first timed call (BENCHMARKS.md,
"Max-pool backward against the memory floor"). GPU peers are synchronised before and after every
sample. ``--threads N`` gives every backend and peer N CPU threads before anything is timed
(:func:`fastconv.bench.peers.apply_threads`; JAX's pool is sized when its CPU client starts, so
``--threads`` reaches it only if nothing in the process started JAX before). PyTorch on a GPU
computes float32 without TF32 unless ``--tf32`` is given, so both sides compute in true float32.

It prints markdown tables of the medians (ms) with the ratio to the fastest peer of each row
(forward, backward, forward + backward, training step; :mod:`fastconv.bench.report`), and
optionally writes JSON (``--json``, with the machine, versions, date and command line) and a PNG
bar chart (``--plot``). ``--from-json`` renders an earlier run again. In a source checkout,
``python benchmarks/write_benchmarks_md.py RUN.json`` puts a run's tables into BENCHMARKS.md.

Usage::

    fastconv bench --threads 2 --dtype float32,float64 --json out.json --plot out.png
    fastconv bench --quick --backends numpy --shapes S1,S3,P1
    fastconv bench --threads 2 --shapes T1,T2 --torch-variant all --no-jax  # fastest torch
    fastconv bench --threads 2 --shapes S3,S4,S5 --algorithm gemm,winograd,winograd2
    fastconv bench --backends cupy --dtype float32          # on a GPU machine, against torch-cuda
    python -m fastconv.bench --help
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastconv.bench.cases import CASES, PHASES, STEP, Case, ConvCase, phases, select
from fastconv.bench.peers import (
    TORCH_DEFAULT_VARIANT,
    FastconvPeer,
    JaxPeer,
    NotSupported,
    Peer,
    TorchPeer,
    apply_threads,
    make_peers,
    parse_torch_variants,
)
from fastconv.bench.report import machine_info, plot, plot_title, render, tables
from fastconv.bench.timing import QUICK, Settings, measure, sample, warm_up

__all__ = [
    "DTYPES",
    "PHASES",
    "STEP",
    "FastconvPeer",
    "JaxPeer",
    "Peer",
    "Settings",
    "TorchPeer",
    "apply_threads",
    "build_parser",
    "main",
    "measure",
    "render",
    "run",
    "tables",
]

DTYPES = ("float32", "float64")


def build_parser(prog: str = "fastconv bench") -> argparse.ArgumentParser:
    """The argument parser of ``fastconv bench``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time the benchmark shapes (conv S1-S6, max pool P1-P3, the conv family's D1-D2, X1, "
        "A1-A2, G1 and NHWC twins) forward and backward, and one training step of each network (T1-T3), "
        "on fastconv's backends, with PyTorch as a peer when installed.",
    )
    parser.add_argument(
        "--backends", default=None, help="comma-separated fastconv backends (default: every available one)"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    parser.add_argument("--no-jax", action="store_true", help="leave JAX out even when installed")
    parser.add_argument(
        "--torch-variant",
        default=None,
        metavar="V[,V...]",
        help="PyTorch variant(s): eager, or options joined by '+' from channels_last, compile, max-autotune, "
        "fused, no-mkldnn; several (or 'all') are timed side by side as torch[V]. Default "
        f"{TORCH_DEFAULT_VARIANT}: per kind of case the fastest measured ({_best()})",
    )
    parser.add_argument(
        "--algorithm",
        default=None,
        metavar="NAME[,NAME...]",
        help="also time the numba backend once per convolution algorithm (gemm, winograd, winograd2, direct, "
        "auto), as peers numba[NAME]; a shape an algorithm cannot run is noted 'n/s'",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="let PyTorch on a GPU use TF32 for float32 convolutions and matrix products (default: off, "
        "so that both sides compute in true float32)",
    )
    parser.add_argument(
        "--dtype", default="float32", help="float32, float64, or both comma-separated (default float32)"
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated shapes, e.g. S1,S3,P1 (default: all; --list-shapes shows them)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one warm-up call and one timed call per measurement: a smoke run of a few seconds",
    )
    parser.add_argument("--repeat", type=int, default=None, help="samples per measurement (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement (default 2)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds per sample; shorter calls are looped (default 0.02)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every backend and peer (BLAS, OpenMP, numba, torch)",
    )
    parser.add_argument(
        "--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON"
    )
    parser.add_argument(
        "--plot", dest="plot_path", default=None, metavar="PATH", help="write a PNG bar chart"
    )
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic of the samples shown in the tables and chart (default median; min is steadier "
        "on a machine shared with other work; the JSON holds both and every sample)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="render the tables / chart of an earlier run's JSON instead of measuring",
    )
    parser.add_argument("--list-shapes", action="store_true", help="print the shapes and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-measurement progress lines")
    return parser


def _parse_dtypes(text: str) -> list[str]:
    dtypes = [d.strip() for d in text.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtype: got {d!r}, need float32 or float64 (or both, comma-separated)")
    return dtypes or ["float32"]


def _best() -> str:
    from fastconv.bench.peers import TORCH_BEST

    return ", ".join(f"{kind} {variant}" for kind, variant in TORCH_BEST.items())


def _parse_algorithms(text: str | None) -> list[str]:
    if text is None:
        return []
    names = list(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    known = ("auto", "gemm", "winograd", "winograd2", "direct")
    for name in names:
        if name not in known:
            raise ValueError(f"--algorithm: unknown algorithm {name!r}; known: {', '.join(known)}")
    return names


def run(
    cases: Sequence[Case],
    peers: Sequence[Peer],
    dtypes: Sequence[str],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every (dtype, case, peer, phase); one result dict per measurement.

    For each case, every peer is warmed up first and then the samples are interleaved (one sample
    of each peer and phase in turn, ``repeat`` rounds), so load from other processes on a shared
    machine falls on all peers alike and the ratios stay meaningful. A peer that fails on a case
    is recorded with its error and the run goes on.
    """
    results = []
    for dtype in dtypes:
        for case in cases:
            timed = []  # (row, fn, sync, number)
            for peer in peers:
                base: dict[str, Any] = {
                    "dtype": dtype,
                    "shape": case.name,
                    "kind": case.kind,
                    "what": case.describe(),
                    "peer": peer.name,
                }
                if isinstance(case, ConvCase):
                    base["gflop_forward"] = case.flops / 1e9
                try:
                    calls = peer.calls(case, dtype)
                except NotSupported as exc:  # e.g. an algorithm that cannot run this shape: a note
                    for phase in phases(case):
                        results.append({**base, "phase": phase, "median_ms": None, "note": str(exc)})
                    continue
                except Exception as exc:  # e.g. no training stack: recorded, and the run goes on
                    for phase in phases(case):
                        results.append({**base, "phase": phase, "median_ms": None, "error": repr(exc)})
                    continue
                info = peer.info(case, dtype)
                for phase, fn in calls.items():
                    row = {**base, **info.get(phase, {}), "phase": phase, "median_ms": None}
                    results.append(row)
                    try:
                        timed.append((row, fn, peer.sync, warm_up(fn, peer.sync, settings)))
                    except Exception as exc:
                        row["error"] = repr(exc)
            samples: dict[int, list[float]] = {i: [] for i in range(len(timed))}
            for _ in range(max(1, settings.repeat)):
                for i, (row, fn, sync, number) in enumerate(timed):
                    if "error" in row:
                        continue
                    try:
                        # a short call: one untimed call first absorbs the previous peer's after-effects
                        if number > 1:
                            sync()
                            fn()
                        samples[i].append(sample(fn, sync, number))
                    except Exception as exc:
                        row["error"] = repr(exc)
            for i, (row, _, _, number) in enumerate(timed):
                if "error" not in row and samples[i]:
                    row["median_ms"] = statistics.median(samples[i]) * 1e3
                    row["min_ms"] = min(samples[i]) * 1e3
                    row["times_ms"] = [t * 1e3 for t in samples[i]]
                    row["number"] = number
                if progress:
                    ms = row["median_ms"]
                    shown = f"{ms:9.3f} ms" if ms is not None else f"error {row.get('error')}"
                    alg = f"  [{row['algorithm']}]" if row.get("algorithm") else ""
                    progress(f"{dtype} {case.name} {row['phase']:8s} {row['peer']:10s} {shown}{alg}")
            if progress:
                for row in results:
                    if row.get("note") and row["shape"] == case.name and row["dtype"] == dtype:
                        progress(f"{dtype} {case.name} {row['phase']:8s} {row['peer']:10s} {row['note']}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastconv bench``; returns the exit status (1 when a measurement failed)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.list_shapes:
        for case in CASES:
            print(f"{case.name}  {case.describe()}")
        return 0
    if args.from_json:
        try:
            with open(args.from_json, encoding="utf-8") as fh:
                doc = json.load(fh)
            if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
                raise ValueError("it has no 'results' list")
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json: cannot read {args.from_json!r} as a fastconv bench JSON file: {exc}")
    else:
        doc = _measure(parser, args, args_list)
    print(render(doc, args.stat))
    if args.json_path and not args.from_json:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
    if args.plot_path:
        plot(doc["results"], args.plot_path, plot_title(doc), args.stat)
    errors = [r for r in doc["results"] if r.get("error")]
    if errors:
        print(
            f"{len(errors)} measurement(s) failed; first: {errors[0]['peer']} {errors[0]['shape']} "
            f"{errors[0]['phase']}: {errors[0]['error']}",
            file=sys.stderr,
        )
        return 1
    return 0


def _measure(
    parser: argparse.ArgumentParser, args: argparse.Namespace, args_list: list[str]
) -> dict[str, Any]:
    """Check the options, run the benchmarks and return the JSON document."""
    try:
        dtypes = _parse_dtypes(args.dtype)
        cases = select(args.shapes)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        for name, value in (("--repeat", args.repeat), ("--warmup", args.warmup)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        variants = parse_torch_variants(args.torch_variant)
        algorithms = _parse_algorithms(args.algorithm)
        peers = make_peers(
            args.backends,
            no_torch=args.no_torch,
            tf32=args.tf32,
            no_jax=args.no_jax,
            torch_variants=variants,
            algorithms=algorithms,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not peers:
        parser.error("nothing to run: no backend selected and PyTorch is not installed")
    settings = Settings(**vars(QUICK)) if args.quick else Settings()
    if args.repeat is not None:
        settings.repeat = args.repeat
    if args.warmup is not None:
        settings.warmup = args.warmup
    if args.min_time is not None:
        settings.min_time = args.min_time

    threads_applied = apply_threads(args.threads, peers) if args.threads is not None else {}
    for who, got in threads_applied.items():
        if isinstance(got, str):
            print(f"warning: --threads {args.threads} for {who}: {got}", file=sys.stderr)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    log(
        f"peers: {', '.join(p.name for p in peers)}; shapes: {', '.join(c.name for c in cases)}; "
        f"dtypes: {', '.join(dtypes)}; threads: {args.threads or 'default'}"
    )
    started = time.perf_counter()
    results = run(cases, peers, dtypes, settings, progress=log)
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "fastconv bench " + shlex.join(args_list),
        "argv": args_list,
        "settings": vars(settings),
        "threads": args.threads,
        "threads_applied": threads_applied,
        "dtypes": dtypes,
        "peers": [p.name for p in peers],
        "torch_variants": [p.variant for p in peers if isinstance(p, TorchPeer)],
        "algorithms": algorithms,
        "machine": machine_info(peers),
        "elapsed_s": time.perf_counter() - started,
        "results": results,
    }
