"""CS231n assignment 2's fast layers: the assignment's own pure-NumPy code against fastconv.compat.cs231n.

    python benchmarks/compat_cs231n.py [--threads 2] [--rounds 9] [--backend numba] [--dtype float32]
        [--quick] [--json out.json]

Baseline: what a student runs without compiling the assignment's Cython extension (im2col_cython),
written here after the assignment's algorithms:

* conv forward: ``conv_forward_strides`` (``conv_forward_fast`` in fast_layers.py): ``np.pad``, an
  ``as_strided`` (C, HH, WW, N, H', W') view made contiguous (``np.ascontiguousarray``), one
  ``w.reshape(F, -1).dot(x_cols) + b``, a transpose made contiguous;
* conv backward: ``conv_backward_strides`` with its ``col2im_6d_cython`` replaced by the pure-NumPy
  ``col2im_indices`` of the assignment's im2col.py (an ``np.add.at`` scatter), the only col2im
  that runs without Cython;
* max pool: fast_layers.py's dispatch, the ``'reshape'`` method (a reshape and two ``max``; the
  backward a mask, a broadcast and a division that splits ties) for square tiling pools with
  stride = pool, else the im2col method on the pure-NumPy ``im2col_indices`` / ``col2im_indices``
  (fast_layers.py calls im2col_cython / col2im_cython there).

Cases: the layers of CS231n's ThreeLayerConvNet at its defaults (3x32x32 input, 32 filters 7x7,
pad 3, stride 1, 2x2/2 max pool, hidden 100, 10 classes, float32) on a batch of 50 (the batch the
assignment's notebook trains ThreeLayerConvNet with; the Solver's own default is 100), forward and
backward; an overlapping 3x3/2 pool (the baseline's im2col path); and one ThreeLayerConvNet
loss-and-gradients step (conv - relu - 2x2 max pool - affine - relu - affine - softmax), the same
NumPy code around either set of layers.

Timing: one warm-up call each (numba compiles), then ``--rounds`` interleaved rounds of one call per
side; medians in ms; speedup = baseline / adapter. BLAS threads (threadpoolctl), numba's threads
and ``fastconv.configure(threads=)`` are all set to ``--threads`` for both sides. Prints a markdown
table and the load average before and after; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

# ---------------------------------------------------------------------------------------------
# The baseline: the assignment's pure-NumPy algorithms (written anew after them, not copied).
# ---------------------------------------------------------------------------------------------


def _index_grids(
    x_shape: tuple[int, ...], fh: int, fw: int, pad: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel, row, col) fancy indices into the padded x: entry [r, l] is the element that row
    r = (c, p, q) of the column matrix takes at output position l = (i, j):
    (c, i*stride + p, j*stride + q)."""
    _, c, h, w = x_shape
    oh = (h + 2 * pad - fh) // stride + 1
    ow = (w + 2 * pad - fw) // stride + 1
    p = np.tile(np.repeat(np.arange(fh), fw), c)
    q = np.tile(np.arange(fw), fh * c)
    i = stride * np.repeat(np.arange(oh), ow)
    j = stride * np.tile(np.arange(ow), oh)
    chan = np.repeat(np.arange(c), fh * fw).reshape(-1, 1)
    return chan, p.reshape(-1, 1) + i.reshape(1, -1), q.reshape(-1, 1) + j.reshape(1, -1)


def im2col_indices(x: np.ndarray, fh: int, fw: int, pad: int, stride: int) -> np.ndarray:
    """im2col.py's im2col_indices: (C*fh*fw, H'*W'*N), column l*N + n (the batch index fastest)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    chan, rows, cols = _index_grids(x.shape, fh, fw, pad, stride)
    taken = xp[:, chan, rows, cols]  # (N, C*fh*fw, H'*W')
    return taken.transpose(1, 2, 0).reshape(x.shape[1] * fh * fw, -1)


def col2im_indices(
    cols: np.ndarray, x_shape: tuple[int, ...], fh: int, fw: int, pad: int, stride: int
) -> np.ndarray:
    """im2col.py's col2im_indices: the adjoint of im2col_indices, summing with np.add.at."""
    n, c, h, w = x_shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    chan, rows, cc = _index_grids(x_shape, fh, fw, pad, stride)
    per_image = cols.reshape(c * fh * fw, -1, n).transpose(2, 0, 1)
    np.add.at(xp, (slice(None), chan, rows, cc), per_image)
    return xp if pad == 0 else xp[:, :, pad:-pad, pad:-pad]


def strided_conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, conv_param: dict) -> tuple[Any, Any]:
    """fast_layers.py's conv_forward_strides: an as_strided im2col and one matrix product."""
    n, c, h, wd = x.shape
    f, _, fh, fw = w.shape
    stride, pad = conv_param["stride"], conv_param["pad"]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    hp, wp = h + 2 * pad, wd + 2 * pad
    oh, ow = (hp - fh) // stride + 1, (wp - fw) // stride + 1
    steps = x.itemsize * np.array((hp * wp, wp, 1, c * hp * wp, stride * wp, stride))
    view = as_strided(xp, shape=(c, fh, fw, n, oh, ow), strides=steps)
    x_cols = np.ascontiguousarray(view).reshape(c * fh * fw, n * oh * ow)
    res = w.reshape(f, -1).dot(x_cols) + b.reshape(-1, 1)
    out = np.ascontiguousarray(res.reshape(f, n, oh, ow).transpose(1, 0, 2, 3))
    return out, (x, w, b, conv_param, x_cols)


def strided_conv_backward(dout: np.ndarray, cache: Any) -> tuple[Any, Any, Any]:
    """fast_layers.py's conv_backward_strides, its col2im_6d_cython replaced by col2im_indices."""
    x, w, b, conv_param, x_cols = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    n, c, h, wd = x.shape
    f, _, fh, fw = w.shape
    db = np.sum(dout, axis=(0, 2, 3))
    d2 = dout.transpose(1, 0, 2, 3).reshape(f, -1)
    dw = d2.dot(x_cols.T).reshape(w.shape)
    dx_cols = w.reshape(f, -1).T.dot(d2)  # (C*HH*WW, N*H'*W'), the batch index slowest
    # col2im_indices wants the batch index fastest: the reorder a student makes to use it
    dx_cols = dx_cols.reshape(c * fh * fw, n, -1).transpose(0, 2, 1).reshape(c * fh * fw, -1)
    dx = col2im_indices(dx_cols, x.shape, fh, fw, pad, stride)
    return dx, dw, db


def reshape_pool_forward(x: np.ndarray, pool_param: dict) -> tuple[Any, Any]:
    """fast_layers.py's max_pool_forward_reshape (square pool = stride, tiling x)."""
    n, c, h, w = x.shape
    k = pool_param["pool_height"]
    blocks = x.reshape(n, c, h // k, k, w // k, k)
    out = blocks.max(axis=3).max(axis=4)
    return out, (x, blocks, out)


def reshape_pool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """fast_layers.py's max_pool_backward_reshape: every maximum of a window gets an equal share."""
    x, blocks, out = cache
    dblocks = np.zeros_like(blocks)
    is_max = blocks == out[:, :, :, None, :, None]
    spread, _ = np.broadcast_arrays(dout[:, :, :, None, :, None], dblocks)
    dblocks[is_max] = spread[is_max]
    dblocks /= np.sum(is_max, axis=(3, 5), keepdims=True)
    return dblocks.reshape(x.shape)


def im2col_pool_forward(x: np.ndarray, pool_param: dict) -> tuple[Any, Any]:
    """fast_layers.py's max_pool_forward_im2col on im2col_indices: argmax over each window's column."""
    n, c, h, w = x.shape
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    oh, ow = (h - ph) // stride + 1, (w - pw) // stride + 1
    cols = im2col_indices(x.reshape(n * c, 1, h, w), ph, pw, 0, stride)
    arg = np.argmax(cols, axis=0)
    best = cols[arg, np.arange(cols.shape[1])]
    out = best.reshape(oh, ow, n, c).transpose(2, 3, 0, 1)
    return out, (x, cols, arg, pool_param)


def im2col_pool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """fast_layers.py's max_pool_backward_im2col on col2im_indices: each dout to its window's argmax."""
    x, cols, arg, pool_param = cache
    n, c, h, w = x.shape
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dcols = np.zeros_like(cols)
    dcols[arg, np.arange(cols.shape[1])] = dout.transpose(2, 3, 0, 1).ravel()
    return col2im_indices(dcols, (n * c, 1, h, w), ph, pw, 0, stride).reshape(x.shape)


def baseline_pool_forward(x: np.ndarray, pool_param: dict) -> tuple[Any, Any]:
    """fast_layers.py's max_pool_forward_fast dispatch: 'reshape' where it applies, else im2col."""
    h, w = x.shape[2:]
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    if ph == pw == stride and h % ph == 0 and w % pw == 0:
        out, cache = reshape_pool_forward(x, pool_param)
        return out, ("reshape", cache)
    out, cache = im2col_pool_forward(x, pool_param)
    return out, ("im2col", cache)


def baseline_pool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    method, inner = cache
    return reshape_pool_backward(dout, inner) if method == "reshape" else im2col_pool_backward(dout, inner)


BASELINE = (strided_conv_forward, strided_conv_backward, baseline_pool_forward, baseline_pool_backward)

# ---------------------------------------------------------------------------------------------
# ThreeLayerConvNet's loss: conv - relu - 2x2 max pool - affine - relu - affine - softmax
# ---------------------------------------------------------------------------------------------


def three_layer_params(rng: np.random.Generator, dtype: str, c: int, hw: int, f: int, hidden: int) -> dict:
    """ThreeLayerConvNet's parameters: weights N(0, 1e-3^2), zero biases, filters 7x7."""
    scale = 1e-3
    return {
        "W1": (scale * rng.standard_normal((f, c, 7, 7))).astype(dtype),
        "b1": np.zeros(f, dtype),
        "W2": (scale * rng.standard_normal((f * (hw // 2) ** 2, hidden))).astype(dtype),
        "b2": np.zeros(hidden, dtype),
        "W3": (scale * rng.standard_normal((hidden, 10))).astype(dtype),
        "b3": np.zeros(10, dtype),
    }


def three_layer_loss(params: dict, X: np.ndarray, y: np.ndarray, layers: tuple) -> tuple[float, dict]:
    """ThreeLayerConvNet.loss(X, y) (reg 0) with the given (conv fwd, conv bwd, pool fwd, pool bwd)."""
    conv_f, conv_b, pool_f, pool_b = layers
    W1, W2, W3 = params["W1"], params["W2"], params["W3"]
    conv_param = {"stride": 1, "pad": (W1.shape[2] - 1) // 2}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    n = X.shape[0]
    a, conv_cache = conv_f(X, W1, params["b1"], conv_param)
    r = np.maximum(0, a)
    p, pool_cache = pool_f(r, pool_param)
    flat = p.reshape(n, -1)
    h = flat.dot(W2) + params["b2"]
    hr = np.maximum(0, h)
    scores = hr.dot(W3) + params["b3"]
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), y].mean()
    ds = np.exp(log_probs)
    ds[np.arange(n), y] -= 1
    ds /= n
    grads = {"W3": hr.T.dot(ds), "b3": ds.sum(axis=0)}
    dh = ds.dot(W3.T) * (h > 0)
    grads["W2"], grads["b2"] = flat.T.dot(dh), dh.sum(axis=0)
    dr = pool_b(dh.dot(W2.T).reshape(p.shape), pool_cache)
    _, grads["W1"], grads["b1"] = conv_b(dr * (a > 0), conv_cache)
    return float(loss), grads


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def medians_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms per call of each function: one warm-up call each, then interleaved rounds."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def cases(quick: bool, dtype: str, layers: tuple) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    """(label, baseline call, adapter call) of every case."""
    rng = np.random.default_rng(0)
    n, c, hw, f, hidden = (4, 3, 16, 8, 20) if quick else (50, 3, 32, 32, 100)
    conv_f, conv_b, pool_f, pool_b = layers
    out: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = []

    x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
    w = (1e-1 * rng.standard_normal((f, c, 7, 7))).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    cp = {"stride": 1, "pad": 3}
    dout = rng.standard_normal((n, f, hw, hw)).astype(dtype)
    base_cache, ours_cache = strided_conv_forward(x, w, b, cp)[1], conv_f(x, w, b, cp)[1]
    label = f"conv 7x7/1 pad 3, x ({n},{c},{hw},{hw}), w ({f},{c},7,7)"
    out.append((f"{label} forward", lambda: strided_conv_forward(x, w, b, cp), lambda: conv_f(x, w, b, cp)))
    out.append(
        (
            f"{label} backward",
            lambda: strided_conv_backward(dout, base_cache),
            lambda: conv_b(dout, ours_cache),
        )
    )

    for k, s, side in ((2, 2, hw), (3, 2, hw - 1)):  # ThreeLayerConvNet's pool; an overlapping one
        xp = np.maximum(0, rng.standard_normal((n, f, side, side))).astype(dtype)  # after a ReLU
        pp = {"pool_height": k, "pool_width": k, "stride": s}
        o = (side - k) // s + 1
        dp = rng.standard_normal((n, f, o, o)).astype(dtype)
        bc, oc = baseline_pool_forward(xp, pp)[1], pool_f(xp, pp)[1]
        label = f"max pool {k}x{k}/{s}, x ({n},{f},{side},{side}) [{bc[0]}]"
        out.append(
            (
                f"{label} forward",
                lambda xp=xp, pp=pp: baseline_pool_forward(xp, pp),
                lambda xp=xp, pp=pp: pool_f(xp, pp),
            )
        )
        out.append(
            (
                f"{label} backward",
                lambda dp=dp, bc=bc: baseline_pool_backward(dp, bc),
                lambda dp=dp, oc=oc: pool_b(dp, oc),
            )
        )

    params = three_layer_params(rng, dtype, c, hw, f, hidden)
    X = rng.standard_normal((n, c, hw, hw)).astype(dtype)
    y = rng.integers(0, 10, n)
    out.append(
        (
            f"ThreeLayerConvNet loss+grads, N={n}",
            lambda: three_layer_loss(params, X, y, BASELINE),
            lambda: three_layer_loss(params, X, y, layers),
        )
    )
    return out


def set_threads(n: int, backend: str) -> None:
    """``n`` threads for BLAS (both sides), numba and fastconv's numba backend."""
    from threadpoolctl import threadpool_limits

    import fastconv

    threadpool_limits(limits=n)  # stays in force for the process (not used as a context manager)
    fastconv.configure(threads=n)
    if backend == "numba":
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; 1 with --quick)")
    parser.add_argument("--backend", default="numba", help="fastconv backend of the adapter")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="small shapes, one round: a smoke run")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 9)

    import fastconv
    from fastconv.compat import cs231n

    fastconv.set_backend(args.backend)
    set_threads(args.threads, args.backend)
    layers = (
        cs231n.conv_forward_fast,
        cs231n.conv_backward_fast,
        cs231n.max_pool_forward_fast,
        cs231n.max_pool_backward_fast,
    )
    load_before = os.getloadavg()
    print(
        f"fastconv.compat.cs231n ({args.backend}) vs the assignment's pure-NumPy layers: {args.dtype}, "
        f"{args.threads} threads, median of {rounds} interleaved rounds, ms"
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)} ({os.cpu_count()} CPUs)\n")
    print("| case | baseline ms | adapter ms | speedup |")
    print("| --- | ---: | ---: | ---: |")
    rows = []
    for label, base, ours in cases(args.quick, args.dtype, layers):
        t = medians_ms({"baseline": base, "adapter": ours}, rounds)
        speedup = t["baseline"] / t["adapter"]
        rows.append(
            {"case": label, "baseline_ms": t["baseline"], "adapter_ms": t["adapter"], "speedup": speedup}
        )
        print(f"| {label} | {t['baseline']:.2f} | {t['adapter']:.2f} | {speedup:.2f}x |", flush=True)
    load_after = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}")
    if args.json:
        meta = {
            "backend": args.backend,
            "dtype": args.dtype,
            "threads": args.threads,
            "rounds": rounds,
            "quick": args.quick,
            "numpy": np.__version__,
            "fastconv": fastconv.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
