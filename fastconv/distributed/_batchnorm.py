"""BatchNorm running statistics under data parallelism.

Each rank normalises with the statistics of its own slice of the global batch and keeps its own
running mean and variance (local statistics, the default: no extra communication, as Horovod and
ChainerMN's plain BatchNormalization). :func:`sync_batchnorm_stats` replaces every rank's running mean
and variance by their mean over the ranks (the variance averaged as is: the mean of the per-rank
running variances, not the variance of the pooled samples), so evaluation and checkpoints see one
model; the trainer calls it at the end of each epoch with ``--sync-bn-stats``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fastconv._arrays import array_module

__all__ = ["batchnorm_layers", "sync_batchnorm_stats"]


def batchnorm_layers(model: Any) -> list[Any]:
    """Every layer under ``model`` with ``running_mean`` and ``running_var`` (fastconv's
    BatchNormalization / BatchNorm2d), found through ``layers`` (a mapping or a sequence) and ``layer``
    attributes, in a fixed order (the same model gives the same list on every rank)."""
    found: list[Any] = []
    seen: set[int] = set()

    def children(obj: Any) -> Iterator[Any]:
        layers = getattr(obj, "layers", None)
        if isinstance(layers, Mapping):
            yield from layers.values()
        elif isinstance(layers, (list, tuple)):
            yield from layers
        inner = getattr(obj, "layer", None)
        if inner is not None:
            yield inner

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if hasattr(obj, "running_mean") and hasattr(obj, "running_var"):
            found.append(obj)
        for child in children(obj):
            walk(child)

    walk(model)
    return found


def sync_batchnorm_stats(communicator: Any, model: Any) -> int:
    """Average the running mean and variance of every BatchNorm layer of ``model`` over the ranks, in place;
    returns the number of layers averaged. A layer that has not run yet on some rank (no statistics:
    its slices were all empty) takes the mean of the ranks that have them."""
    layers = batchnorm_layers(model)
    if communicator.size == 1 or not layers:
        return 0
    # Which rank has statistics for which layer, and their shapes, so every rank packs the same buffer.
    mine = [
        None if bn.running_mean is None else (tuple(bn.running_mean.shape), str(bn.running_mean.dtype))
        for bn in layers
    ]
    everyone = communicator.allgather_object(mine)
    params: dict[str, Any] = {}
    targets: list[tuple[Any, int]] = []
    for i, bn in enumerate(layers):
        known = [r[i] for r in everyone if r[i] is not None]
        if not known:
            continue
        if any(k != known[0] for k in known):
            raise ValueError(
                f"BatchNorm layer {i} has statistics of different shapes on different ranks: {known}"
            )
        shape, dtype = known[0]
        if bn.running_mean is None:
            bn.running_mean = np.zeros(shape, dtype=dtype)
            bn.running_var = np.zeros(shape, dtype=dtype)
        params[f"{i}/mean"] = bn.running_mean
        params[f"{i}/var"] = bn.running_var
        targets.append((bn, i))
    if not params:
        return 0
    have = all(mine[i] is not None for _, i in targets)
    # One weight per rank for every layer at once: a rank lacking some layer's statistics weighs 0 for all
    # of them only in the rare case where it lacks one; then the ranks that have them decide.
    saved = dict(communicator.stats)
    averaged = communicator.average_gradients(params, params if have else None, 1.0 if have else 0.0)
    communicator.stats = saved
    for bn, i in targets:
        xp = array_module(bn.running_mean)
        bn.running_mean = xp.array(averaged[f"{i}/mean"], copy=True)
        bn.running_var = xp.array(averaged[f"{i}/var"], copy=True)
    return len(targets)
