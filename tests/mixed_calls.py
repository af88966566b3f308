"""A mixed workload of every kernel, shared by the thread and memory tests and their child processes."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

import fastconv


def inputs(rng: np.random.Generator, dtype: type) -> tuple[np.ndarray, ...]:
    x = rng.standard_normal((6, 5, 13, 12)).astype(dtype)
    W = rng.standard_normal((7, 5, 3, 3)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    dout = rng.standard_normal((6, 7, 13, 12)).astype(dtype)
    xpool = rng.standard_normal((6, 5, 12, 12)).astype(dtype)
    return x, W, b, dout, xpool


def calls(backend: str) -> dict[str, Callable[[], list[np.ndarray]]]:
    """name -> zero-argument call returning host arrays; the inputs are built once, on the device."""
    rng = np.random.default_rng(0)
    out = {}
    for dtype in (np.float32, np.float64):
        x, W, b, dout, xpool = (fastconv.to_device(a, backend=backend) for a in inputs(rng, dtype))
        y, am = fastconv.max_pool2d(xpool, 2, backend=backend)
        g = fastconv.to_device(rng.standard_normal(y.shape).astype(dtype), backend=backend)
        y3, am3 = fastconv.max_pool2d(x, 3, 1, 1, backend=backend)
        col = fastconv.im2col(x, 3, 3, 1, 1, backend=backend)
        d = np.dtype(dtype).name
        out.update(
            {
                f"conv-{d}": lambda x=x, W=W, b=b: [fastconv.conv2d(x, W, b, 1, 1, backend=backend)],
                f"conv-s2-{d}": lambda x=x, W=W: [fastconv.conv2d(x, W, None, 2, 0, backend=backend)],
                f"conv-backward-{d}": lambda x=x, W=W, g=dout: list(
                    fastconv.conv2d_backward(g, x, W, 1, 1, backend=backend)
                ),
                f"pool-{d}": lambda xpool=xpool: list(fastconv.max_pool2d(xpool, 2, backend=backend)),
                f"pool-3x3-{d}": lambda x=x: list(fastconv.max_pool2d(x, 3, 1, 1, backend=backend)),
                f"pool-backward-{d}": lambda g=g, am=am, s=xpool.shape: [
                    fastconv.max_pool2d_backward(g, am, s, 2, backend=backend)
                ],
                f"pool-backward-3x3-{d}": lambda y=y3, am=am3, s=x.shape: [
                    fastconv.max_pool2d_backward(y, am, s, 3, 1, 1, backend=backend)
                ],
                f"im2col-{d}": lambda x=x: [fastconv.im2col(x, 3, 3, 1, 1, backend=backend)],
                f"col2im-{d}": lambda c=col, s=x.shape: [fastconv.col2im(c, s, 3, 3, 1, 1, backend=backend)],
            }
        )
    return {k: (lambda f=f: [fastconv.to_host(a) for a in f()]) for k, f in out.items()}


def run_threads(backend: str, n_threads: int = 4, n_calls: int = 50) -> tuple[list[str], list[str]]:
    """(names of the calls whose results differ, bit for bit, from the single-threaded ones, errors raised)."""
    table = calls(backend)
    names = sorted(table)
    want = {k: table[k]() for k in names}
    differs: list[str] = []
    errors: list[str] = []

    def work(seed: int) -> None:
        order = np.random.default_rng(seed).integers(0, len(names), n_calls)
        for i in order:
            try:
                got = table[names[i]]()
            except Exception as exc:
                errors.append(repr(exc))
                return
            if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want[names[i]])):
                differs.append(names[i])

    threads = [threading.Thread(target=work, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return differs, errors
