"""Masked select against bit arithmetic for the Relu layer's zeroing (layers._zero_where).

    python benchmarks/relu_masking.py

On the random signs of activations a masked select branches per element and mispredicts about half of
them; the bit arithmetic does three branch-free passes (BENCHMARKS.md, "The conv family").
"""

from __future__ import annotations

import timeit

import numpy as np

from fastconv.layers import _zero_where

x = np.random.default_rng(0).standard_normal((64, 32, 28, 28)).astype(np.float32)
mask = x <= 0
zero = np.float32(0)


def assign() -> np.ndarray:
    out = x.copy()
    out[mask] = 0
    return out


for name, call in {
    "np.where(mask, 0, x)": lambda: np.where(mask, zero, x),
    "copy + boolean-index assignment": assign,
    "bit arithmetic (layers._zero_where)": lambda: _zero_where(x, mask),
}.items():
    best = min(timeit.repeat(call, number=5, repeat=7)) / 5
    print(f"{name:38s} {best * 1e3:6.2f} ms")
