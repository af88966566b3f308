"""How close max-pool backward is to the memory floor, float32, samples interleaved.

For P1-P3, times fastconv's numba max-pool backward, PyTorch's (when installed), and a "floor"
kernel that moves the same bytes in the simplest pattern: it reads dout and argmax once,
contiguously, and writes every element of a fresh dx once (one numba prange pass, the same
threads). No unpooling can move fewer bytes, so twice PyTorch's speed is out of reach wherever
the floor is above half of PyTorch's time.

python benchmarks/pool_backward_floor.py [--threads 2] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

import fastconv
from fastconv.bench.cases import PoolCase, pool_inputs, select


@njit(parallel=True, cache=True)
def floor_pass(dout, argmax, dx):  # pragma: no cover - jitted
    """dx[t, q] = 0, then dx[t, q] += dout[t, q] where argmax[t, q] == 0 (q < OH*OW): per plane t,
    one contiguous read of dout and argmax and one write of the dx plane."""
    for t in prange(dx.shape[0]):
        d = dx[t]
        g = dout[t]
        a = argmax[t]
        for q in range(d.size):
            d[q] = 0
        for q in range(g.size):
            d[q] += g[q] if a[q] == 0 else 0


def calls_for(case: PoolCase, torch: Any) -> tuple[dict[str, Callable[[], Any]], float]:
    """The three timed calls of one case, and the megabytes the floor moves."""
    a = pool_inputs(case, np.float32)
    k, s, p = case.kernel, case.stride, case.pad
    _, argmax = fastconv.max_pool2d(a["x"], k, s, p, backend="numba")
    planes = case.x_shape[0] * case.x_shape[1]
    plane = case.x_shape[2] * case.x_shape[3]
    g2, a2 = a["dout"].reshape(planes, -1), argmax.reshape(planes, -1)
    calls = {
        "numba": lambda: fastconv.max_pool2d_backward(
            a["dout"], argmax, case.x_shape, k, s, p, backend="numba"
        ),
        "floor": lambda: floor_pass(g2, a2, np.empty((planes, plane), np.float32)),
    }
    if torch is not None:
        aten = torch.ops.aten
        tx, tg = torch.from_numpy(a["x"]), torch.from_numpy(a["dout"])
        _, idx = aten.max_pool2d_with_indices(tx, [k, k], [s, s], [p, p], [1, 1], False)
        calls["torch"] = lambda: aten.max_pool2d_with_indices_backward(
            tg, tx, [k, k], [s, s], [p, p], [1, 1], False, idx
        )
    return calls, (a["dout"].nbytes + argmax.nbytes + a["x"].nbytes) / 1e6


def main() -> None:
    """Print, per pool case, the median of each call and the floor's share of PyTorch's time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    fastconv.configure(threads=args.threads)  # numba's threads and BLAS's
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    for case in select("P1,P2,P3"):
        calls, moved = calls_for(case, torch)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for fn in calls.values():
            fn()
            fn()
        for _ in range(args.repeat):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        cells = ", ".join(f"{name} {ms:.2f} ms" for name, ms in med.items())
        extra = f"; floor / torch {med['floor'] / med['torch']:.2f}" if "torch" in med else ""
        print(f"{case.name} ({moved:.1f} MB moved): {cells}{extra}")


if __name__ == "__main__":
    main()
