"""What ``fastconv bench`` reports: the machine, markdown tables, a PNG chart, a whole run rendered.

A run is a JSON-ready document (see ``fastconv.bench.main``) whose ``results`` hold one row per
measurement: ``dtype``, ``shape``, ``what`` (the case described), ``peer``, ``phase``, and
``median_ms`` / ``min_ms`` (None when the measurement failed, with ``error``, or when the peer cannot
run the case, with ``note``), and for a fastconv convolution ``algorithm`` (what ran; shown in the
cell, e.g. ``12.3 (1.00x) winograd``; ``fwd/bwd`` in the forward + backward table). The rows of an
NHWC case carry ``layout`` and ``twin`` (its NCHW case): a last table per dtype gives each peer's
NHWC / NCHW time ratio.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastconv.bench.cases import PHASES, STEP
from fastconv.bench.peers import FastconvPeer, Peer, TorchPeer

__all__ = ["TABLES", "cpu_model", "machine_info", "plot", "plot_title", "render", "tables"]

# The tables of a report, per dtype: title, and the phases whose times each cell adds up.
TABLES = (
    ("forward", (PHASES[0],)),
    ("backward", (PHASES[1],)),
    ("forward + backward", PHASES),
    ("training step (forward, backward, update)", (STEP,)),
)

_POOL_KEYS = (
    "user_api",
    "internal_api",
    "version",
    "num_threads",
    "threading_layer",
    "architecture",
    "prefix",
)


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(peers: Sequence[Peer]) -> dict[str, Any]:
    """The machine a run measured, JSON-ready: CPU, cores, BLAS and OpenMP pools, GPU, package
    versions, each fastconv backend's ``info()``, and PyTorch's CUDA settings when it is a peer."""
    from threadpoolctl import threadpool_info

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    info["threadpools"] = [{k: v for k, v in pool.items() if k in _POOL_KEYS} for pool in threadpool_info()]
    blas = [p for p in info["threadpools"] if p.get("user_api") == "blas"]
    info["blas"] = (
        ", ".join(
            f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
            for p in blas
        )
        or "unknown"
    )
    versions = {
        d: _version(d)
        for d in ("fastconv", "numpy", "numba", "torch", "cupy", "jax", "jaxlib", "threadpoolctl")
    }
    info["versions"] = {k: v for k, v in versions.items() if v is not None}
    gpus = []
    for peer in peers:
        if peer.name == "cupy":
            try:
                import cupy

                props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
                name = props["name"]
                gpus.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:  # the description is best effort; the timings do not depend on it
                pass
        if isinstance(peer, TorchPeer) and peer.device.startswith("cuda"):
            torch = peer.torch
            gpus.append(torch.cuda.get_device_name(0))
            info["torch_cuda"] = {"cudnn": torch.backends.cudnn.version(), "tf32": peer.tf32}
    info["gpu"] = sorted(set(gpus)) or "none"
    info["backends"] = {p.backend: _backend_info(p.backend) for p in peers if isinstance(p, FastconvPeer)}
    return info


def _backend_info(name: str) -> dict[str, str]:
    """The backend's optional ``info()`` (versions, threads, cache)."""
    import fastconv

    try:
        getter = getattr(fastconv.get_backend_object(name), "info", None)
        return {str(k): str(v) for k, v in getter().items()} if getter else {}
    except Exception as exc:  # recorded in the JSON instead of stopping the run
        return {"error": repr(exc)}


def _cell(ms: float | None, best: float | None, *, bold: bool, tag: str = "", missing: str = "error") -> str:
    if ms is None:
        return missing
    text = f"{ms:.3g} ({ms / best:.2f}x)" if best else f"{ms:.3g}"
    if ms >= 100:
        text = f"{ms:.0f} ({ms / best:.2f}x)" if best else f"{ms:.0f}"
    text = f"**{text}**" if bold else text
    return f"{text} {tag}" if tag else text


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
                tags: dict[str, str] = {}
                missing: dict[str, str] = {}
                for peer in peers:
                    parts = [index.get((dtype, shape, peer, ph)) for ph in phases]
                    if any(p is None for p in parts):
                        continue
                    values = [v for p in parts if p is not None and (v := p.get(f"{stat}_ms")) is not None]
                    row[peer] = sum(values) if len(values) == len(phases) else None
                    algs = [str(p["algorithm"]) for p in parts if p is not None and p.get("algorithm")]
                    if algs and peer.find("[") < 0:  # numba[winograd] names its algorithm already
                        tags[peer] = algs[0] if len(set(algs)) == 1 else "/".join(algs)
                    if any(p is not None and p.get("note") for p in parts):
                        missing[peer] = "n/s"
                if not row:
                    continue
                valid = [v for v in row.values() if v is not None]
                best = min(valid) if valid else None
                cells = [
                    _cell(
                        row[p],
                        best,
                        bold=row[p] is not None and row[p] == best,
                        tag=tags.get(p, ""),
                        missing=missing.get(p, "error"),
                    )
                    if p in row
                    else "-"
                    for p in peers
                ]
                lines.append(f"| {shape} | {what[shape]} | " + " | ".join(cells) + " |")
            if lines:
                out.append(f"\n{dtype}, {title}: {stat} ms (ratio to the fastest)\n")
                out.append("| shape | case | " + " | ".join(peers) + " |")
                out.append("|---|---|" + "---:|" * len(peers))
                out.extend(lines)
        out.extend(_layout_table(results, dtype, peers, index, stat))
    return "\n".join(out).lstrip("\n") + "\n"


def _layout_table(
    results: Sequence[dict[str, Any]],
    dtype: str,
    peers: list[str],
    index: dict[tuple[str, str, str, str], dict[str, Any]],
    stat: str,
) -> list[str]:
    """The lines of a table of each NHWC case's time over its NCHW twin's (rows with a ``twin``), per
    peer, forward / backward; empty when the run has no NHWC case beside its twin."""
    twins = {r["shape"]: r["twin"] for r in results if r.get("twin") and r["dtype"] == dtype}
    lines = []
    for shape, twin in twins.items():
        cells = []
        for peer in peers:
            ratios = []
            for ph in PHASES:
                nhwc, nchw = index.get((dtype, shape, peer, ph)), index.get((dtype, twin, peer, ph))
                a = nhwc.get(f"{stat}_ms") if nhwc else None
                b = nchw.get(f"{stat}_ms") if nchw else None
                ratios.append(f"{a / b:.2f}x" if a is not None and b else "-")
            cells.append(" / ".join(ratios) if any(r != "-" for r in ratios) else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {shape} | {twin} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [
        f"\n{dtype}, NHWC / NCHW: each NHWC case's {stat} time over its NCHW twin's, forward / backward "
        "(below 1: NHWC is faster)\n",
        "| NHWC | NCHW | " + " | ".join(peers) + " |",
        "|---|---|" + "---:|" * len(peers),
        *lines,
    ]


def plot(results: Sequence[dict[str, Any]], path: str, title: str = "", stat: str = "median") -> None:
    """Write a PNG bar chart to ``path``: one panel per (dtype, phase); per shape, each peer's time
    divided by the fastest peer's (1 = fastest), with the fastest time in ms under the shape's name.
    Needs matplotlib."""
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
    cap = 6.0  # ratios above are clipped (and labelled) so one outlier keeps the rest readable
    for i, dtype in enumerate(dtypes):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            shapes = list(dict.fromkeys(r["shape"] for r in results if r["phase"] == phase))
            best = {}
            for shape in shapes:
                valid = [v for p in peers if (v := index.get((dtype, shape, p, phase))) is not None]
                best[shape] = min(valid) if valid else None
            x = np.arange(len(shapes))
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


def render(doc: dict[str, Any], stat: str = "median") -> str:
    """The markdown report of a run (its JSON document): a header with date, machine, versions,
    method and command line, then :func:`tables`."""
    machine, settings = doc["machine"], doc["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    gpu = ", ".join(machine["gpu"]) if isinstance(machine["gpu"], list) else machine["gpu"]
    threads = doc["threads"] or "default"
    cuda = machine.get("torch_cuda")
    torch_cuda = (
        f" | torch-cuda: cuDNN {cuda['cudnn']}, TF32 {'on' if cuda['tf32'] else 'off'}" if cuda else ""
    )
    variants = doc.get("torch_variants") or []
    torch_variant = f" | torch variant: {', '.join(dict.fromkeys(variants))}" if variants else ""
    if "best" in variants:  # what "best" ran, per kind of case, from the rows
        ran = {
            r["kind"]: r["variant"]
            for r in doc["results"]
            if r.get("variant") and r["peer"].startswith("torch")
        }
        if ran:
            torch_variant += " (" + ", ".join(f"{k}: {v}" for k, v in ran.items()) + ")"
    header = (
        f"{doc['date']} | {machine['cpu']}, {machine['cores']} cores, GPU: {gpu} | BLAS: {machine['blas']} | "
        f"threads: {threads} | {versions}{torch_cuda}{torch_variant}\n\n"
        f"Each cell: {stat} of {settings['repeat']} samples (peers interleaved, each sample >= "
        f"{settings['min_time'] * 1e3:.0f} ms) after {settings['warmup']} warm-up call(s).\n\n"
        f"`{doc['command']}`\n"
    )
    notes = sorted({f"{r['peer']} {r['shape']}: {r['note']}" for r in doc["results"] if r.get("note")})
    if notes:
        header += "\nn/s (not supported): " + "; ".join(notes) + "\n"
    return header + "\n" + tables(doc["results"], stat)


def plot_title(doc: dict[str, Any]) -> str:
    """The title of a run's chart: machine, threads and date."""
    return (
        f"fastconv bench, {doc['machine']['cpu']}, threads {doc['threads'] or 'default'}, {doc['date'][:10]}"
    )
