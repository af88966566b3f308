"""``fastconv bench``: time the benchmark shapes on every backend, with PyTorch as a peer.

For each shape of :mod:`fastconv._bench_shapes` (convolutions S1-S6, max pools P1-P3, training
steps T1-T2) and each peer (the chosen fastconv backends, plus ``torch`` on the CPU when PyTorch
is installed, plus ``torch-cuda`` when it sees a GPU), it times the forward pass and the backward
pass separately:

* conv forward ``conv2d(x, W, b, stride, pad)``; backward ``conv2d_backward`` -> (dx, dW, db)
  (PyTorch: ``F.conv2d`` and ``aten.convolution_backward`` with all three gradients);
* pool forward ``max_pool2d`` -> (y, argmax); backward ``max_pool2d_backward`` -> dx
  (PyTorch: ``aten.max_pool2d_with_indices`` and its backward);
* training step: forward, backward and optimizer update of SimpleConvNet (T1) or the Keras-style
  network (T2) (PyTorch: the same network, loss and optimizer in eager mode).

Timing: ``warmup`` calls (compiles JIT kernels, warms caches), then ``repeat`` samples with
:func:`time.perf_counter`, the peers' samples interleaved round by round; a sample loops the call
enough times to last ``min_time`` seconds, and the reported figure is the median time per call.
A call shorter than ``min_time`` gets one untimed call before each sample: on a 2-core machine the
previous peer's threads go on spinning for a few ms (PyTorch's OpenMP pool), which slowed the next
short call up to 2x (measured: BENCHMARKS.md, max-pool backward). GPU peers are synchronised before and
after every sample. ``--threads N`` sets the CPU threads of every backend and peer alike
(BLAS and OpenMP through threadpoolctl, ``torch.set_num_threads``, numba's
``set_num_threads``) before anything is timed.

It prints markdown tables of the medians (ms) with the ratio to the fastest peer of each row
(forward, backward, forward + backward, training step), and optionally writes JSON (``--json``, with the
machine, versions, date and command line) and a PNG bar chart (``--plot``).

Usage::

    fastconv bench --threads 2 --dtype float32,float64 --json out.json --plot out.png
    fastconv bench --quick --backends numpy --shapes S1,S3,P1
    python -m fastconv.bench --help
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv._bench_shapes import (
    CASES,
    Case,
    ConvCase,
    TrainCase,
    build_train_step,
    conv_inputs,
    pool_inputs,
    select,
    train_inputs,
)

PHASES = ("forward", "backward")
STEP = "step"  # the one phase of a training-step case
DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------------------------
# Timing


@dataclass
class Settings:
    """How each measurement is taken."""

    warmup: int = 2
    repeat: int = 7
    min_time: float = 0.02  # seconds per sample; short calls are looped to reach it


QUICK = Settings(warmup=1, repeat=1, min_time=0.0)


def warm_up(fn: Callable[[], Any], sync: Callable[[], None], settings: Settings) -> int:
    """Run ``fn`` ``settings.warmup`` times (JIT compilation, first-touch allocation) and return how
    many calls one sample needs to last ``settings.min_time`` seconds."""
    single = math.inf
    for _ in range(max(1, settings.warmup)):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        single = min(single, time.perf_counter() - start)
    if settings.min_time > 0 and single < settings.min_time:
        return min(10_000, max(1, math.ceil(settings.min_time / max(single, 1e-7))))
    return 1


def sample(fn: Callable[[], Any], sync: Callable[[], None], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls, the device synchronised around them."""
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number


def measure(fn: Callable[[], Any], sync: Callable[[], None], settings: Settings) -> dict[str, Any]:
    """Median seconds per call of ``fn`` after warming up; ``sync`` waits for a device to finish.

    Returns ``{"median_s", "times_s", "number"}``: ``times_s`` holds one time per call for each
    sample (``number`` calls per sample).
    """
    number = warm_up(fn, sync, settings)
    times = [sample(fn, sync, number) for _ in range(max(1, settings.repeat))]
    return {"median_s": statistics.median(times), "times_s": times, "number": number}


# ----------------------------------------------------------------------------------------------
# Peers: a fastconv backend, or PyTorch


def _no_sync() -> None:
    return None


@dataclass
class Peer:
    """Something that runs the benchmark cases: a fastconv backend or PyTorch on a device."""

    name: str
    sync: Callable[[], None] = field(default=_no_sync)

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """``{"forward": fn, "backward": fn}`` for ``case`` in ``dtype``, inputs already on the device."""
        raise NotImplementedError


class FastconvPeer(Peer):
    """A fastconv backend, called through the public functional API."""

    def __init__(self, backend: str) -> None:
        super().__init__(name=backend, sync=_device_sync(backend))

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        import fastconv

        name = self.name

        def dev(a: np.ndarray) -> Any:
            return fastconv.to_device(a, backend=name)

        if isinstance(case, TrainCase):
            return {STEP: build_train_step(case, name, dtype)}
        if isinstance(case, ConvCase):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p = case.stride, case.pad
            return {
                "forward": lambda: fastconv.conv2d(a["x"], a["W"], a["b"], s, p, backend=name),
                "backward": lambda: fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, backend=name),
            }
        a = {k: dev(v) for k, v in pool_inputs(case, dtype).items()}
        k, s, p = case.kernel, case.stride, case.pad
        _, argmax = fastconv.max_pool2d(a["x"], k, s, p, backend=name)
        shape = tuple(case.x_shape)
        return {
            "forward": lambda: fastconv.max_pool2d(a["x"], k, s, p, backend=name),
            "backward": lambda: fastconv.max_pool2d_backward(a["dout"], argmax, shape, k, s, p, backend=name),
        }


def _device_sync(backend: str) -> Callable[[], None]:
    """A function that waits for the backend's device to finish its queued work (no-op on CPU)."""
    if backend != "cupy":
        return _no_sync
    import cupy

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    return sync


class TorchPeer(Peer):
    """``torch.nn.functional`` / ATen on a device, the reference peer (never a fastconv dependency)."""

    def __init__(self, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = device
        sync = torch.cuda.synchronize if device.startswith("cuda") else _no_sync
        super().__init__(name="torch" if device == "cpu" else f"torch-{device}", sync=sync)

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        torch = self.torch
        aten = torch.ops.aten

        def dev(a: np.ndarray) -> Any:
            return torch.from_numpy(a).to(self.device)

        if isinstance(case, TrainCase):
            return {STEP: self.train_step(case, dtype)}
        if isinstance(case, ConvCase):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p = [case.stride] * 2, [case.pad] * 2
            bias_sizes = [case.w_shape[0]]

            def forward() -> Any:
                return torch.nn.functional.conv2d(a["x"], a["W"], a["b"], s, p)

            def backward() -> Any:
                # dx, dW, db in one call: what autograd runs for a conv layer.
                return aten.convolution_backward(
                    a["dout"], a["x"], a["W"], bias_sizes, s, p, [1, 1], False, [0, 0], 1, [True, True, True]
                )

            return {"forward": forward, "backward": backward}

        a = {k: dev(v) for k, v in pool_inputs(case, dtype).items()}
        k, s, p = [case.kernel] * 2, [case.stride] * 2, [case.pad] * 2
        _, indices = aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False)
        return {
            "forward": lambda: aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False),
            "backward": lambda: aten.max_pool2d_with_indices_backward(
                a["dout"], a["x"], k, s, p, [1, 1], False, indices
            ),
        }

    def train_step(self, case: TrainCase, dtype: str) -> Callable[[], Any]:
        """The same network, loss and optimizer in PyTorch eager mode, one step per call."""
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(0)
        if case.network == "simple":
            model = nn.Sequential(
                nn.Conv2d(1, 30, 5),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(30 * 12 * 12, 100),
                nn.ReLU(),
                nn.Linear(100, 10),
            )
        else:
            model = nn.Sequential(
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
            )
        model = model.to(device=self.device, dtype=getattr(torch, dtype))
        if case.optimizer == "adam":
            optimizer: Any = torch.optim.Adam(model.parameters(), lr=0.001)
        else:  # Keras' RMSprop defaults
            optimizer = torch.optim.RMSprop(model.parameters(), lr=0.001, alpha=0.9, eps=1e-7)
        data = train_inputs(case, dtype)
        x = torch.from_numpy(data["x"]).to(self.device)
        labels = torch.from_numpy(data["t"].argmax(axis=1)).to(self.device)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> Any:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), labels)
            loss.backward()
            optimizer.step()
            return loss

        return step


def available_backends() -> list[str]:
    """Names of the fastconv backends usable here (``fastconv.list_backends()``)."""
    import fastconv

    listed = fastconv.list_backends()
    if isinstance(listed, dict):  # name -> availability or info
        return [n for n, v in listed.items() if _is_available(v)]
    return [n if isinstance(n, str) else getattr(n, "name", str(n)) for n in listed]


def _is_available(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return bool(value.get("available", True))
    return value is None or bool(getattr(value, "available", True))


def torch_devices() -> list[str]:
    """The PyTorch devices to compare with: ``cpu``, plus ``cuda`` when PyTorch sees a GPU; [] without torch."""
    try:
        import torch
    except ImportError:
        return []
    devices = ["cpu"]
    try:
        if torch.cuda.is_available():
            devices.append("cuda")
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        pass
    return devices


# ----------------------------------------------------------------------------------------------
# Threads and machine description


def set_threads(n: int, peers: Sequence[Peer]) -> dict[str, Any]:
    """Give every backend and peer ``n`` CPU threads; returns what each one reports afterwards.

    Import the peers first: threadpoolctl only sees the BLAS/OpenMP libraries already loaded.
    The returned limiter must stay referenced (see :data:`_LIMITERS`).
    """
    applied: dict[str, Any] = {}
    names = {p.name for p in peers}
    if "numba" in names:
        try:
            from fastconv.backends import numba_backend

            setter = getattr(numba_backend, "set_threads", None)
            if setter is not None:
                setter(n)
            else:
                import numba

                numba.set_num_threads(n)
            import numba

            applied["numba"] = numba.get_num_threads()
        except Exception as exc:  # e.g. n above NUMBA_NUM_THREADS
            applied["numba"] = f"not set: {exc}"
    if any(p.name.startswith("torch") for p in peers):
        import torch

        torch.set_num_threads(n)
        applied["torch"] = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits

        _LIMITERS.append(threadpool_limits(limits=n))
        applied["threadpoolctl"] = n
    except ImportError:
        applied["threadpoolctl"] = "not installed: BLAS threads not set (pip install threadpoolctl)"
    return applied


_LIMITERS: list[Any] = []  # keeps threadpoolctl limits alive for the process


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def machine_info(peers: Sequence[Peer]) -> dict[str, Any]:
    """CPU, cores, BLAS/OpenMP pools, GPU, package versions; JSON-ready."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {
                k: v
                for k, v in pool.items()
                if k
                in (
                    "user_api",
                    "internal_api",
                    "version",
                    "num_threads",
                    "threading_layer",
                    "architecture",
                    "prefix",
                )
            }
            for pool in threadpool_info()
        ]
        blas = [p for p in info["threadpools"] if p.get("user_api") == "blas"]
        info["blas"] = (
            ", ".join(
                f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
                for p in blas
            )
            or "unknown"
        )
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    info["versions"] = {
        dist: _version(dist) for dist in ("fastconv", "numpy", "numba", "torch", "cupy", "threadpoolctl")
    }
    info["versions"] = {k: v for k, v in info["versions"].items() if v is not None}
    gpus = []
    for peer in peers:
        if peer.name == "cupy":
            try:
                import cupy

                props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
                name = props["name"]
                gpus.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:
                pass
        if isinstance(peer, TorchPeer) and peer.device.startswith("cuda"):
            gpus.append(peer.torch.cuda.get_device_name(0))
    info["gpu"] = sorted(set(gpus)) or "none"
    backends = {}
    for peer in peers:
        if isinstance(peer, FastconvPeer):
            backends[peer.name] = _backend_info(peer.name)
    info["backends"] = backends
    return info


def _backend_info(name: str) -> dict[str, str]:
    """The backend's optional ``info()`` (versions, threads, threading layer)."""
    try:
        from fastconv._registry import get_backend_object

        getter = getattr(get_backend_object(name), "info", None)
        return {str(k): str(v) for k, v in getter().items()} if getter else {}
    except Exception as exc:
        return {"error": repr(exc)}


# ----------------------------------------------------------------------------------------------
# Running


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
                except Exception as exc:
                    for phase in (STEP,) if isinstance(case, TrainCase) else PHASES:
                        results.append({**base, "phase": phase, "median_ms": None, "error": repr(exc)})
                    continue
                for phase, fn in calls.items():
                    row = {**base, "phase": phase, "median_ms": None}
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
                    progress(f"{dtype} {case.name} {row['phase']:8s} {row['peer']:10s} {shown}")
            del timed
    return results


# ----------------------------------------------------------------------------------------------
# Reporting


def _cell(ms: float | None, best: float | None, *, bold: bool) -> str:
    if ms is None:
        return "error"
    text = f"{ms:.3g} ({ms / best:.2f}x)" if best else f"{ms:.3g}"
    if ms >= 100:
        text = f"{ms:.0f} ({ms / best:.2f}x)" if best else f"{ms:.0f}"
    return f"**{text}**" if bold else text


TABLES = (
    ("forward", (PHASES[0],)),
    ("backward", (PHASES[1],)),
    ("forward + backward", PHASES),
    ("training step (forward, backward, update)", (STEP,)),
)


def tables(results: Sequence[dict[str, Any]], stat: str = "median") -> str:
    """Markdown tables of median (or ``stat="min"``: minimum) ms with the ratio to each row's fastest
    peer (the fastest in bold): per dtype, forward, backward, their sum, and the training steps."""
    out = []
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    peers = list(dict.fromkeys(r["peer"] for r in results))
    shapes = list(dict.fromkeys(r["shape"] for r in results))
    index = {(r["dtype"], r["shape"], r["peer"], r["phase"]): r for r in results}
    what = {r["shape"]: r["what"] for r in results}
    for dtype in dtypes:
        for title, phases in TABLES:
            lines = []
            for shape in shapes:
                row: dict[str, float | None] = {}
                for peer in peers:
                    parts = [index.get((dtype, shape, peer, ph)) for ph in phases]
                    if any(p is None for p in parts):
                        continue
                    values = [p.get(f"{stat}_ms") for p in parts if p is not None]
                    row[peer] = None if any(v is None for v in values) else sum(values)
                if not row:
                    continue
                valid = [v for v in row.values() if v is not None]
                best = min(valid) if valid else None
                cells = [
                    _cell(row[p], best, bold=row[p] is not None and row[p] == best) if p in row else "-"
                    for p in peers
                ]
                lines.append(f"| {shape} | {what[shape]} | " + " | ".join(cells) + " |")
            if lines:
                out.append(f"\n{dtype}, {title}: {stat} ms (ratio to the fastest)\n")
                out.append("| shape | case | " + " | ".join(peers) + " |")
                out.append("|---|---|" + "---:|" * len(peers))
                out.extend(lines)
    return "\n".join(out).lstrip("\n") + "\n"


def plot(results: Sequence[dict[str, Any]], path: str, title: str = "", stat: str = "median") -> None:
    """A PNG bar chart: one panel per (dtype, phase); per shape, each peer's median time divided by the
    fastest peer's (1 = fastest), with the fastest time in ms under the shape's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    peers = list(dict.fromkeys(r["peer"] for r in results))
    phases = [ph for ph in (*PHASES, STEP) if any(r["phase"] == ph for r in results)]
    index = {(r["dtype"], r["shape"], r["peer"], r["phase"]): r.get(f"{stat}_ms") for r in results}
    widths = [max(1, len({r["shape"] for r in results if r["phase"] == ph})) for ph in phases]
    fig, axes = plt.subplots(
        len(dtypes),
        len(phases),
        figsize=(2.0 + 0.8 * sum(widths), 3.0 * len(dtypes)),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    bar = 0.8 / max(1, len(peers))
    for i, dtype in enumerate(dtypes):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            shapes = list(dict.fromkeys(r["shape"] for r in results if r["phase"] == phase))
            best = {}
            for shape in shapes:
                valid = [index.get((dtype, shape, p, phase)) for p in peers]
                valid = [v for v in valid if v is not None]
                best[shape] = min(valid) if valid else None
            x = np.arange(len(shapes))
            cap = 6.0  # ratios above are clipped (and labelled) so one outlier keeps the rest readable
            for k, peer in enumerate(peers):
                ratios = []
                for shape in shapes:
                    v = index.get((dtype, shape, peer, phase))
                    ratios.append(v / best[shape] if v is not None and best[shape] else 0.0)
                xs = x + (k - (len(peers) - 1) / 2) * bar
                ax.bar(xs, [min(r, cap) for r in ratios], bar, label=peer, color=f"C{k}")
                for xi, r in zip(xs, ratios):
                    if r > cap:  # clipped bar: print its ratio at the top
                        ax.text(
                            xi,
                            cap * 0.98,
                            f"{r:.0f}x",
                            ha="center",
                            va="top",
                            fontsize=7,
                            rotation=90,
                            color="white",
                        )
            labels = [f"{s}\n{best[s]:.3g} ms" if best[s] else s for s in shapes]
            ax.set_xticks(x, labels, fontsize=8)
            ax.axhline(1.0, color="black", linewidth=0.6)
            ax.set_ylim(0, cap * 1.15)
            if j == 0:
                ax.set_ylabel("time / fastest (lower is better)")
            ax.set_title(f"{dtype} {'training step' if phase == STEP else phase}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser(prog: str = "fastconv bench") -> argparse.ArgumentParser:
    """The argument parser of ``fastconv bench``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time the benchmark shapes (conv S1-S6, max pool P1-P3) forward and backward, and one "
        "training step of each network (T1, T2), on fastconv's backends, with PyTorch as a peer when "
        "installed.",
    )
    parser.add_argument(
        "--backends", default=None, help="comma-separated fastconv backends (default: every available one)"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
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
        "--markdown",
        dest="md_path",
        default=None,
        metavar="PATH",
        help="also write the tables to a markdown file (only between the fastconv-bench markers if it has them)",
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
        help="render the tables / chart / markdown of an earlier run's JSON instead of measuring",
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


def make_peers(backends_arg: str | None, no_torch: bool) -> list[Peer]:
    """The fastconv backends asked for (all available by default) and the PyTorch peers."""
    if backends_arg:
        wanted = [b.strip() for b in backends_arg.split(",") if b.strip()]
    else:
        wanted = available_backends()
    available = available_backends() if any(not n.startswith("torch") for n in wanted) else []
    peers: list[Peer] = []
    for name in wanted:
        if name.startswith("torch"):
            continue  # PyTorch is a peer, added below
        if name not in available:
            raise ValueError(
                f"--backends: backend {name!r} is not available here; available: {', '.join(available)} "
                "(`fastconv info` says why a backend is missing)"
            )
        peers.append(FastconvPeer(name))
    if not no_torch:
        peers.extend(TorchPeer(device) for device in torch_devices())
    return peers


MARK_START, MARK_END = "<!-- fastconv-bench:start -->", "<!-- fastconv-bench:end -->"


def write_markdown(path: str, body: str) -> None:
    """Write ``body`` to ``path``; when the file exists and holds the markers ``MARK_START`` and
    ``MARK_END``, replace only the text between them (so BENCHMARKS.md keeps its prose)."""
    try:
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
    except FileNotFoundError:
        old = ""
    start, end = old.find(MARK_START), old.find(MARK_END)
    if 0 <= start < end:
        new = old[: start + len(MARK_START)] + "\n" + body + "\n" + old[end:]
    else:
        new = body
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(new)
    os.replace(tmp, path)


def render(doc: dict[str, Any], stat: str = "median") -> str:
    """The markdown report of a run (the JSON document): a header with date, machine, versions,
    method and command line, then :func:`tables`."""
    machine, settings = doc["machine"], doc["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    gpu = ", ".join(machine["gpu"]) if isinstance(machine["gpu"], list) else machine["gpu"]
    threads = doc["threads"] or "default"
    header = (
        f"{doc['date']} | {machine['cpu']}, {machine['cores']} cores, GPU: {gpu} | BLAS: {machine['blas']} | "
        f"threads: {threads} | {versions}\n\n"
        f"Each cell: {stat} of {settings['repeat']} samples (peers interleaved, each sample >= "
        f"{settings['min_time'] * 1e3:.0f} ms) after {settings['warmup']} warm-up call(s).\n\n"
        f"`{doc['command']}`\n"
    )
    return header + "\n" + tables(doc["results"], stat)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastconv bench``; returns the exit status."""
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
    text = render(doc, args.stat)
    print(text)
    if args.md_path:
        write_markdown(args.md_path, text)
    if args.json_path and not args.from_json:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
    if args.plot_path:
        title = f"fastconv bench, {doc['machine']['cpu']}, threads {doc['threads'] or 'default'}, {doc['date'][:10]}"
        plot(doc["results"], args.plot_path, title, args.stat)
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
        peers = make_peers(args.backends, args.no_torch)
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

    threads_applied = set_threads(args.threads, peers) if args.threads is not None else {}
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
        "machine": machine_info(peers),
        "elapsed_s": time.perf_counter() - started,
        "results": results,
    }


if __name__ == "__main__":
    raise SystemExit(main())
