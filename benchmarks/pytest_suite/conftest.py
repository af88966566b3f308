"""pytest-benchmark suite: fixtures for the peers (fastconv backends and PyTorch).

Run ``pytest benchmarks/pytest_suite`` (timings, grouped per shape, phase and dtype so one group
compares every backend), or add ``--benchmark-disable`` for a smoke run where each body runs once,
on a batch of 2, so the suite never rots. ``FASTCONV_BENCH_THREADS=N`` gives every backend and
peer N CPU threads, as ``fastconv bench --threads N`` does.
"""

from __future__ import annotations

import os

import pytest

from fastconv.bench.peers import FastconvPeer, Peer, TorchPeer, apply_threads

PEERS = ["numpy", "numba", "cupy", "torch", "torch-cuda"]


@pytest.fixture(scope="session", params=PEERS)
def peer(request: pytest.FixtureRequest) -> Peer:
    """A fastconv backend, or PyTorch on the CPU or a CUDA device; skipped when not usable here."""
    name = request.param
    if name.startswith("torch"):
        torch = pytest.importorskip("torch")
        if name == "torch-cuda" and not torch.cuda.is_available():
            pytest.skip("PyTorch sees no CUDA device")
        made: Peer = TorchPeer("cpu" if name == "torch" else "cuda")
    else:
        import fastconv

        status = fastconv.list_backends()[name]
        if not status["available"]:
            pytest.skip(f"backend {name!r} unavailable: {status['reason']}")
        made = FastconvPeer(name)
    threads = os.environ.get("FASTCONV_BENCH_THREADS")
    if threads:
        apply_threads(int(threads), [made])
    return made


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    """The compute dtype of a benchmark."""
    return request.param
