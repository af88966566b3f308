"""Sharding without moving data: every rank holds the whole data set, draws the same order of it for
each epoch from (seed, epoch), cuts that order into the user's global batches, and trains on its own
contiguous slice of each global batch.

No index or sample crosses the network: the order is a pure function of (seed, epoch), so a resumed
run and any number of ranks see the same global batches, and a one-rank run is the reference of
a many-rank one.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["epoch_order", "global_batches", "shard", "shard_bounds", "steps_per_epoch"]

# Domain separation for the epoch streams: SeedSequence(seed, spawn_key=(_STREAM, epoch)) never equals
# what np.random.default_rng(seed) (the initial weights) or its own spawn() children draw.
_STREAM = 0xFC0D


def _entropy(seed: Any) -> int | list[int]:
    """``seed`` as SeedSequence entropy: a non-negative int, or a non-empty sequence of them."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        return int(seed)
    if isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) > 0:
        return [_entropy(s) for s in seed]  # type: ignore[misc]
    raise TypeError(f"seed must be a non-negative int or a sequence of them, got {seed!r}")


def epoch_order(n: int, seed: Any, epoch: int) -> np.ndarray:
    """The order of ``n`` samples in epoch ``epoch`` (0-based): a permutation drawn from (seed, epoch)
    alone, the same on every rank and after a resume."""
    if n < 0 or epoch < 0:
        raise ValueError(f"n and epoch must be non-negative, got n={n}, epoch={epoch}")
    ss = np.random.SeedSequence(_entropy(seed), spawn_key=(_STREAM, int(epoch)))
    return np.random.default_rng(ss).permutation(n)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Global batches of one epoch over ``n`` samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def global_batches(order: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[np.ndarray]:
    """The global batches of one epoch: ``batch_size`` indices of ``order`` at a time; the last, shorter
    one is kept (its gradient weighted by its size) or dropped with ``drop_last``."""
    n = len(order)
    for start in range(0, steps_per_epoch(n, batch_size, drop_last) * batch_size, batch_size):
        yield order[start : start + batch_size]


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s contiguous share of ``n`` items over ``size`` ranks:
    ``lo = n * rank // size``, ``hi = n * (rank + 1) // size``. Shares differ by at most one item; with
    ``n < size`` some are empty. In rank order they tile [0, n)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    return n * rank // size, n * (rank + 1) // size


def shard(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s slice of a global batch (possibly empty: that rank then joins the allreduce with a
    zero gradient of weight 0)."""
    lo, hi = shard_bounds(len(batch), rank, size)
    return batch[lo:hi]
