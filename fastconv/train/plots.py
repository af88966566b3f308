"""The PNGs of ``fastconv train``: learning curves, test predictions, first-layer filters.

Drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no screen), each written
atomically (temp file + rename).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastconv.train._io import atomic_write


def _figure(w: float, h: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the examples extra
        raise ModuleNotFoundError(
            "the plots of fastconv train need matplotlib: pip install 'fastconv[examples]'"
        ) from exc
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Loss and accuracy per epoch, train and test, side by side."""
    fig = _figure(10, 4)
    epochs = [int(r["epoch"]) for r in history]
    ax1, ax2 = fig.subplots(1, 2)
    for ax, key, label in ((ax1, "loss", "loss (cross-entropy)"), (ax2, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train (mean over the epoch)")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], "s-", label="test (after the epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    if history:
        last = history[-1]
        ax2.set_title(f"final test accuracy {100 * last['test_acc']:.2f}%")
        ax1.set_title(f"final test loss {last['test_loss']:.4f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _mosaic(tiles: np.ndarray, columns: int, gap: int, fill: float) -> np.ndarray:
    """(N, h, w) tiles -> one (rows*(h+gap)+gap, columns*(w+gap)+gap) image, row-major."""
    n, h, w = tiles.shape
    rows = max(1, -(-n // columns))
    out = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap), fill, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, columns)
        out[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = (
            tiles[i]
        )
    return out


def plot_predictions(
    images: np.ndarray,
    predicted: np.ndarray,
    true: np.ndarray,
    path: str | os.PathLike[str],
    n_first: int = 40,
    n_wrong: int = 8,
    columns: int = 8,
    title: str = "",
) -> Path:
    """A grid of test images labelled 'pred P / true T': the first ``n_first`` test images, then up to
    ``n_wrong`` misclassified ones from the rest; wrong predictions are in red, with a red frame.

    images: (N, 1, H, W) or (N, H, W) in [0, 1]; predicted, true: (N,) int.
    """
    from matplotlib.patches import Rectangle

    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:
        images = images.mean(axis=1)
    predicted, true = np.asarray(predicted), np.asarray(true)
    n = len(images)
    shown = list(range(min(n_first, n)))
    wrong_rest = [int(i) for i in np.flatnonzero(predicted != true) if i >= len(shown)][:n_wrong]
    shown += wrong_rest
    h, w = images.shape[1:]
    gap = max(2, h // 4)
    label_h = max(4, h // 2)  # room above each image for its label
    rows = max(1, -(-len(shown) // columns))
    tiles = np.zeros((len(shown), h + label_h, w))
    tiles[:, label_h:, :] = images[shown]
    mosaic = _mosaic(tiles, columns, gap, 0.0)
    fig = _figure(1.25 * columns, 1.35 * rows + 0.5)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.45 / (1.35 * rows + 0.5)))
    ax.imshow(mosaic, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    for k, i in enumerate(shown):
        r, c = divmod(k, columns)
        x0, y0 = gap + c * (w + gap), gap + r * (h + label_h + gap)
        ok = predicted[i] == true[i]
        ax.text(
            x0 + w / 2,
            y0 + label_h * 0.55,
            f"pred {predicted[i]} / true {true[i]}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if ok else "red",
            fontweight="normal" if ok else "bold",
        )
        if not ok:
            ax.add_patch(
                Rectangle((x0 - 0.5, y0 + label_h - 0.5), w, h, fill=False, edgecolor="red", linewidth=2.5)
            )
    wrong_total = int(np.sum(predicted != true))
    head = title or "test predictions"
    fig.suptitle(
        f"{head}: first {min(n_first, n)} test images"
        + (f" + {len(wrong_rest)} misclassified" if wrong_rest else "")
        + f"\n(red = wrong; {wrong_total} of {n} test images wrong)",
        fontsize=9,
        y=0.995,
        va="top",
    )
    return _save(fig, path)


def plot_filters(W: np.ndarray, path: str | os.PathLike[str], title: str = "first-layer filters") -> Path:
    """Each first-layer filter W[f, 0] of W (F, C, kh, kw) as a small image (the book's
    ``visualize_filter``: gray_r, each filter scaled to its own range); for C > 1 the channels are averaged."""
    W = np.asarray(W, dtype=np.float64)
    kernels = W[:, 0] if W.shape[1] == 1 else W.mean(axis=1)
    lo = kernels.min(axis=(1, 2), keepdims=True)
    span = kernels.max(axis=(1, 2), keepdims=True) - lo
    scaled = (kernels - lo) / np.where(span > 0, span, 1.0)
    f, kh, kw = kernels.shape
    columns = min(10, f)
    rows = -(-f // columns)
    gap = 1
    mosaic = _mosaic(scaled, columns, gap, np.nan)
    fig = _figure(0.8 * columns + 0.4, 0.8 * rows + 0.8)
    ax = fig.add_axes((0.02, 0.02, 0.96, 1.0 - 0.75 / (0.8 * rows + 0.8)))
    cmap = _cmap_with_gap()
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    extra = "" if W.shape[1] == 1 else f", mean over {W.shape[1]} input channels"
    fig.suptitle(
        f"{title}\n{f} filters of {kh}x{kw}{extra} (gray_r, each scaled to its range)",
        fontsize=9,
        y=0.995,
        va="top",
    )
    return _save(fig, path)


def _cmap_with_gap() -> Any:
    from matplotlib import colormaps

    return colormaps["gray_r"].with_extremes(bad="white")  # the gaps between filters are NaN
