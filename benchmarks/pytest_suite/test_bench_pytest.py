"""pytest-benchmark: every kernel shape and training step on every peer.

Groups are ``"<shape> <phase> <dtype>"``, so ``pytest-benchmark compare`` and the summary table
put all backends of one shape side by side. With ``--benchmark-disable`` each body runs once
on a batch of 2 (same code paths, a fraction of the time): the CI smoke mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fastconv.bench.cases import CONV_CASES, PHASES, POOL_CASES, STEP, TRAIN_CASES, Case, TrainCase
from fastconv.bench.peers import Peer


def _for(benchmark: Any, case: Case) -> Case:
    """The case itself when timing; in smoke mode (benchmarks disabled) the same layer on a batch of 2."""
    if not benchmark.disabled:
        return case
    if isinstance(case, TrainCase):
        return dataclasses.replace(case, batch=2)
    return dataclasses.replace(case, x_shape=(2, *case.x_shape[1:]))


def _run(benchmark: Any, peer: Peer, fn: Any) -> None:
    def call() -> None:
        fn()
        peer.sync()

    if not benchmark.disabled:
        call()  # warm-up: JIT compilation and first-touch allocations stay out of the timings
    benchmark(call)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", CONV_CASES + POOL_CASES, ids=lambda c: c.name)
def test_kernel_phase_is_timed_on_every_peer(
    benchmark: Any, peer: Peer, case: Case, phase: str, dtype: str
) -> None:
    """Convolution (x, W, b -> y; dout -> dx, dW, db) or max pool (x -> y, argmax; dout -> dx)."""
    benchmark.group = f"{case.name} {phase} {dtype}"
    benchmark.extra_info["case"] = case.describe()
    fn = peer.calls(_for(benchmark, case), dtype)[phase]
    _run(benchmark, peer, fn)


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: c.name)
def test_training_step_is_timed_on_every_peer(
    benchmark: Any, peer: Peer, case: TrainCase, dtype: str
) -> None:
    """One training step (forward, backward, optimizer update) of each network."""
    if peer.name in ("numpy", "numba", "cupy"):
        pytest.importorskip("fastconv.train.keras" if case.network == "keras" else "fastconv.train.networks")
    benchmark.group = f"{case.name} {STEP} {dtype}"
    benchmark.extra_info["case"] = case.describe()
    fn = peer.calls(_for(benchmark, case), dtype)[STEP]
    _run(benchmark, peer, fn)
