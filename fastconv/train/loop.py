"""The one training loop: shuffling, mini-batches, accuracy, evaluation and the progress bar.

``fastconv train`` (:mod:`fastconv.train.trainer`) and ``Sequential.fit`` (:mod:`fastconv.train.keras`)
both run :func:`train`; ``Sequential.evaluate`` and the trainer's final evaluation run :func:`evaluate`.

A model here is anything with ``params`` (name -> array), ``loss_and_gradient(x, t) -> (mean loss,
grads keyed like params, outputs (N, K))`` and ``evaluate_batch(x, t) -> (mean loss, outputs (N, K))``;
the optimizer has ``update(params, grads)``. Data stays on the host; ``place`` moves each batch (images and
targets alike) to the model's device. Targets are class indices (N,) or rows (N, K) (one-hot for the
accuracy, whose labels are their argmax).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastconv._arrays import to_host

__all__ = ["EpochResult", "batch_indices", "evaluate", "progress_bar", "train", "train_epoch"]

Place = Callable[[np.ndarray], Any]


@dataclass
class EpochResult:
    """One epoch of :func:`train`: ``epoch`` counts from 1; ``loss`` and ``accuracy`` are the means over the
    epoch's training batches (as they were when each batch was seen), ``val_*`` those of the evaluation
    after it (None without validation data, ``*accuracy`` None when not asked for); ``val_predictions``
    are the predicted labels of the validation samples (N,); ``seconds`` covers training and evaluation."""

    epoch: int
    loss: float
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    val_predictions: np.ndarray | None
    seconds: float


def _identity(a: np.ndarray) -> Any:
    return a


def _labels(t: np.ndarray) -> np.ndarray:
    """Class labels (N,) of targets given as indices (N,) or rows (N, K)."""
    return t if t.ndim == 1 else t.argmax(axis=1)


def batch_indices(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Indices of each mini-batch of ``n`` samples, ``batch_size`` at a time (the last one may be short):
    in order without ``rng``, else in the order of one ``rng.permutation(n)`` drawn before the first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def progress_bar(total: int, desc: str, enabled: bool = True, *, leave: bool = False) -> Any:
    """A tqdm bar of ``total`` batches on stderr, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the examples extra
        return None
    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
    )


def train_epoch(
    model: Any,
    optimizer: Any,
    x: np.ndarray,
    t: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    place: Place = _identity,
    accuracy: bool = True,
    bar: Any = None,
) -> tuple[float, float | None]:
    """One pass over x (N, ...) and t (N,) or (N, K) in mini-batches shuffled by ``rng`` (in order without
    it), one optimizer step per batch. Returns (mean loss, accuracy or None)."""
    n = len(x)
    total, correct, seen = 0.0, 0, 0
    for idx in batch_indices(n, batch_size, rng):
        tb = t[idx]
        loss, grads, out = model.loss_and_gradient(place(x[idx]), place(tb))
        optimizer.update(model.params, grads)
        seen += len(idx)
        total += loss * len(idx)
        if accuracy:
            correct += int((to_host(out).argmax(axis=1) == _labels(tb)).sum())
        if bar is not None:
            bar.update(1)
            shown = {"loss": f"{total / seen:.4f}"}
            if accuracy:
                shown["accuracy"] = f"{correct / seen:.4f}"
            bar.set_postfix(shown, refresh=False)
    return total / n, (correct / n if accuracy else None)


def evaluate(
    model: Any,
    x: np.ndarray,
    t: np.ndarray,
    batch_size: int,
    *,
    place: Place = _identity,
    accuracy: bool = True,
) -> tuple[float, float | None, np.ndarray]:
    """(mean loss, accuracy or None, predicted labels (N,)) of x (N, ...) against t (N,) or (N, K), in
    batches of ``batch_size``, without dropout and without changing the model."""
    n = len(x)
    if n == 0 or len(t) != n:
        raise ValueError(f"evaluation needs samples and as many targets: x has {n}, t has {len(t)}")
    total, correct, preds = 0.0, 0, []
    for idx in batch_indices(n, batch_size):
        tb = t[idx]
        loss, out = model.evaluate_batch(place(x[idx]), place(tb))
        p = to_host(out).argmax(axis=1)
        preds.append(p)
        total += float(loss) * len(idx)
        if accuracy:
            correct += int((p == _labels(tb)).sum())
    return total / n, (correct / n if accuracy else None), np.concatenate(preds)


def train(
    model: Any,
    optimizer: Any,
    x: np.ndarray,
    t: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator | None,
    place: Place = _identity,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    validation_batch_size: int = 500,
    accuracy: bool = True,
    start_epoch: int = 0,
    progress: bool = False,
    leave_progress: bool = False,
) -> Iterator[EpochResult]:
    """Train for epochs ``start_epoch + 1 .. epochs``, yielding an :class:`EpochResult` after each.

    Each epoch draws one permutation from ``rng`` (no shuffling when None) and nothing else, so a run
    resumed with the saved state of ``rng`` (and of the model and optimizer) continues bit for bit. The
    caller's code between two epochs (checkpoints, logs) runs when the next result is taken.
    ``progress``: a bar per epoch on stderr, kept afterwards with ``leave_progress``.
    """
    if len(x) != len(t):
        raise ValueError(f"x has {len(x)} samples, t has {len(t)}")
    if len(x) == 0:
        raise ValueError("no training samples")
    steps = -(-len(x) // batch_size)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        bar = progress_bar(steps, f"Epoch {epoch + 1}/{epochs}", progress, leave=leave_progress)
        try:
            loss, acc = train_epoch(
                model, optimizer, x, t, batch_size, rng=rng, place=place, accuracy=accuracy, bar=bar
            )
            val_loss = val_acc = val_preds = None
            if validation is not None:
                val_loss, val_acc, val_preds = evaluate(
                    model, *validation, validation_batch_size, place=place, accuracy=accuracy
                )
            if bar is not None:
                logs = {"loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc}
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if v is not None})
        finally:
            if bar is not None:
                bar.close()
        yield EpochResult(epoch + 1, loss, acc, val_loss, val_acc, val_preds, time.perf_counter() - t0)
