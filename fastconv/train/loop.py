"""The one training loop: shuffling, mini-batches, accuracy, evaluation and the progress bar.

``fastconv train`` (:mod:`fastconv.train.trainer`) and ``Sequential.fit`` (:mod:`fastconv.train.keras`)
both run :func:`train`; ``Sequential.evaluate`` and the trainer's final evaluation run :func:`evaluate`.

A model here is anything with ``params`` (name -> array), ``loss_and_gradient(x, t) -> (mean loss,
grads keyed like params, outputs (N, K))`` and ``evaluate_batch(x, t) -> (mean loss, outputs (N, K))``;
the optimizer has ``update(params, grads)``. Data stays on the host; ``place`` moves each batch (images and
targets alike) to the model's device. Targets are class indices (N,) or rows (N, K) (one-hot for the
accuracy, whose labels are their argmax).

Data parallelism (:mod:`fastconv.distributed`): given a ``communicator``, every rank runs this same loop
on the whole data set, trains on its own slice of each global batch of ``batch_size`` samples (the
order of an epoch is drawn from (seed, epoch), the same on every rank), and the optimizer, wrapped in a
:class:`~fastconv.distributed.DistributedOptimizer`, averages the gradients over every sample of every
rank before the same update everywhere. Losses and accuracies are summed over the ranks, so every
rank's :class:`EpochResult` is global; evaluation is split over the ranks the same way. A
single-process communicator runs the same path in one process: it is the reference of a many-rank run.
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
    communicator: Any = None,
    order: np.ndarray | None = None,
    drop_last: bool = False,
) -> tuple[float, float | None]:
    """One pass over x (N, ...) and t (N,) or (N, K) in mini-batches shuffled by ``rng`` (in order without
    it; ``order`` gives the order itself), one optimizer step per batch. Returns (mean loss, accuracy or
    None) over the samples trained on (every one, unless ``drop_last`` drops a short last batch).

    With a ``communicator`` each batch is global: this rank trains on its slice of it
    (:func:`fastconv.distributed.shard`, possibly empty) and ``optimizer`` must take
    ``update(params, grads, weight)`` (a :class:`~fastconv.distributed.DistributedOptimizer`); the
    returned means are over every rank's samples."""
    n = len(x)
    if order is None:
        order = rng.permutation(n) if rng is not None else np.arange(n)
    rank, size = (0, 1) if communicator is None else (communicator.rank, communicator.size)
    if drop_last and n < batch_size:
        raise ValueError(
            f"drop_last with {n} samples and batch_size {batch_size} leaves no batch to train on"
        )
    total, correct, seen = 0.0, 0, 0
    for idx in _batches(order, batch_size, drop_last):
        if communicator is None:
            tb = t[idx]
            loss, grads, out = model.loss_and_gradient(place(x[idx]), place(tb))
            optimizer.update(model.params, grads)
            mine = idx
        else:
            from fastconv.distributed import shard

            mine = shard(idx, rank, size)
            tb = t[mine]
            if len(mine):
                loss, grads, out = model.loss_and_gradient(place(x[mine]), place(tb))
            else:  # an empty slice still joins the allreduce, with weight 0
                loss, grads, out = 0.0, None, None
            optimizer.update(model.params, grads, weight=len(mine))
        seen += len(mine)
        total += loss * len(mine)
        if accuracy and len(mine):
            correct += int((to_host(out).argmax(axis=1) == _labels(tb)).sum())
        if bar is not None:
            bar.update(1)
            if seen:
                shown = {"loss": f"{total / seen:.4f}"}
                if accuracy:
                    shown["accuracy"] = f"{correct / seen:.4f}"
                bar.set_postfix(shown, refresh=False)
    if communicator is not None:  # counts stay exact in float64 (below 2**53)
        sums = communicator.allreduce_sum([total, correct, seen])
        total, correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
    return total / seen, (correct / seen if accuracy else None)


def _batches(order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def evaluate(
    model: Any,
    x: np.ndarray,
    t: np.ndarray,
    batch_size: int,
    *,
    place: Place = _identity,
    accuracy: bool = True,
    communicator: Any = None,
) -> tuple[float, float | None, np.ndarray]:
    """(mean loss, accuracy or None, predicted labels (N,)) of x (N, ...) against t (N,) or (N, K), in
    batches of ``batch_size``, without dropout and without changing the model.

    With a ``communicator`` each rank evaluates its contiguous share of the samples; the sums and the
    predictions (in sample order) are gathered, so every rank returns the result over all N."""
    n = len(x)
    if n == 0 or len(t) != n:
        raise ValueError(f"evaluation needs samples and as many targets: x has {n}, t has {len(t)}")
    lo, hi = 0, n
    if communicator is not None and communicator.size > 1:
        from fastconv.distributed import shard_bounds

        lo, hi = shard_bounds(n, communicator.rank, communicator.size)
    total, correct, preds = 0.0, 0, [np.zeros(0, dtype=np.intp)]
    for idx in batch_indices(hi - lo, batch_size):
        idx = idx + lo
        tb = t[idx]
        loss, out = model.evaluate_batch(place(x[idx]), place(tb))
        p = to_host(out).argmax(axis=1)
        preds.append(p)
        total += float(loss) * len(idx)
        if accuracy:
            correct += int((p == _labels(tb)).sum())
    predictions = np.concatenate(preds)
    if communicator is not None and communicator.size > 1:
        sums = communicator.allreduce_sum([total, correct])
        total, correct = float(sums[0]), int(sums[1])
        predictions = communicator.gather_rows(predictions)
    return total / n, (correct / n if accuracy else None), predictions


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
    communicator: Any = None,
    seed: Any = None,
    drop_last: bool = False,
    sync_batchnorm: bool = False,
) -> Iterator[EpochResult]:
    """Train for epochs ``start_epoch + 1 .. epochs``, yielding an :class:`EpochResult` after each.

    Without a communicator each epoch draws one permutation from ``rng`` (no shuffling when None) and
    nothing else, so a run resumed with the saved state of ``rng`` (and of the model and optimizer)
    continues bit for bit. The caller's code between two epochs (checkpoints, logs) runs when the next
    result is taken. ``progress``: a bar per epoch on stderr, kept afterwards with ``leave_progress``.
    ``drop_last``: skip the last global batch when it is short (else its gradient is the mean over its
    samples, as any other batch's).

    ``communicator`` (:func:`fastconv.distributed.create_communicator`): data-parallel training. Rank 0's
    parameters and optimizer state are broadcast first (so a resumed or differently seeded rank joins
    rank 0's model); the order of epoch e is :func:`fastconv.distributed.epoch_order` (``seed``, e) when
    ``rng`` is given (shuffling on; ``seed`` defaults to the seed ``rng`` was created from, rank 0's),
    independent of ``rng``'s state, so a resumed run needs no RNG state; ``optimizer`` is wrapped in a
    :class:`~fastconv.distributed.DistributedOptimizer` unless it is one. The bar is rank 0's (showing
    its own slice's running means); results are global. ``sync_batchnorm``: average the BatchNorm
    running statistics over the ranks at the end of each epoch (local by default).
    """
    if len(x) != len(t):
        raise ValueError(f"x has {len(x)} samples, t has {len(t)}")
    if len(x) == 0:
        raise ValueError("no training samples")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    steps = len(x) // batch_size if drop_last else -(-len(x) // batch_size)
    # A DistributedOptimizer given without a communicator brings its own.
    comm = communicator if communicator is not None else getattr(optimizer, "communicator", None)
    if comm is not None:
        optimizer, seed = _distributed_setup(comm, model, optimizer, rng, seed)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        shown = progress and (comm is None or comm.is_root)
        bar = progress_bar(steps, f"Epoch {epoch + 1}/{epochs}", shown, leave=leave_progress)
        try:
            order = None
            if comm is not None:
                from fastconv.distributed import epoch_order

                order = epoch_order(len(x), seed, epoch) if rng is not None else np.arange(len(x))
            loss, acc = train_epoch(
                model,
                optimizer,
                x,
                t,
                batch_size,
                rng=rng,
                place=place,
                accuracy=accuracy,
                bar=bar,
                communicator=comm,
                order=order,
                drop_last=drop_last,
            )
            if sync_batchnorm and comm is not None:
                from fastconv.distributed import sync_batchnorm_stats

                sync_batchnorm_stats(comm, model)
            val_loss = val_acc = val_preds = None
            if validation is not None:
                val_loss, val_acc, val_preds = evaluate(
                    model,
                    *validation,
                    validation_batch_size,
                    place=place,
                    accuracy=accuracy,
                    communicator=comm,
                )
            if bar is not None:
                logs = {"loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc}
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if v is not None})
        finally:
            if bar is not None:
                bar.close()
        yield EpochResult(epoch + 1, loss, acc, val_loss, val_acc, val_preds, time.perf_counter() - t0)


def _rng_seed(rng: np.random.Generator) -> Any:
    """The entropy ``rng`` was seeded with (``np.random.default_rng(seed)`` keeps it), which names the
    epoch orders of a data-parallel run; a Generator built otherwise gives one draw of it instead."""
    seed_seq = getattr(rng.bit_generator, "seed_seq", None)
    entropy = getattr(seed_seq, "entropy", None)
    if entropy is None:
        return int(rng.integers(2**63))
    spawn_key = tuple(getattr(seed_seq, "spawn_key", ()))
    return [*np.atleast_1d(entropy).tolist(), *spawn_key] if spawn_key else entropy


def _distributed_setup(comm: Any, model: Any, optimizer: Any, rng: Any, seed: Any) -> tuple[Any, Any]:
    """Wrap the optimizer, agree on the shuffling seed, and start every rank from rank 0's model and
    optimizer state."""
    from fastconv.distributed import DistributedOptimizer

    if not isinstance(optimizer, DistributedOptimizer):
        optimizer = DistributedOptimizer(optimizer, comm)
    elif optimizer.communicator is not comm:
        raise ValueError("the DistributedOptimizer was made with another communicator than the one given")
    if rng is not None:
        if seed is None:
            seed = _rng_seed(rng)
        seed = comm.bcast_object(seed)
    comm.bcast_params(model.params)
    comm.bcast_optimizer(optimizer, model.params)
    return optimizer, seed
