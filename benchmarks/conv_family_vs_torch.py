"""Grouped / depthwise, NHWC and transposed convolutions: the numba backend against PyTorch CPU.

Calls the numba backend's kernels directly (contract v2) and PyTorch's ATen ops, interleaved, best
of ``--repeat`` runs each, on the same threads (``--threads``, default 2). PyTorch's time is the
faster of its NCHW and channels_last memory formats. Prints one line per case: milliseconds and
PyTorch's time over ours (> 1 means ours is faster).

    python benchmarks/conv_family_vs_torch.py [--threads 2] [--repeat 7] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeat):  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default="", help="run the cases whose name holds this text")
    args = ap.parse_args()

    import torch

    import fastconv
    from fastconv.backends.numba import ops

    torch.set_num_threads(args.threads)
    fastconv.configure(threads=args.threads)
    rng = np.random.default_rng(0)
    dt = np.dtype(args.dtype)

    def nhwc(a):  # type: ignore[no-untyped-def]
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))

    def conv_case(name, xs, ws, stride, p, groups):  # type: ignore[no-untyped-def]
        x = rng.standard_normal(xs).astype(dt)
        W = rng.standard_normal(ws).astype(dt)
        pad = (p, p, p, p)
        xt, Wt = torch.from_numpy(x), torch.from_numpy(W)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(xt, Wt, None, stride, p, 1, groups)
        dy = torch.from_numpy(rng.standard_normal(tuple(y.shape)).astype(dt))
        dycl = dy.contiguous(memory_format=torch.channels_last)
        bw = torch.ops.aten.convolution_backward
        st = (stride, stride)
        t_f = {
            "nchw": lambda: torch.nn.functional.conv2d(xt, Wt, None, stride, p, 1, groups),
            "cl": lambda: torch.nn.functional.conv2d(xcl, Wt, None, stride, p, 1, groups),
        }
        t_b = {
            "nchw": lambda: bw(
                dy, xt, Wt, [ws[0]], st, (p, p), (1, 1), False, (0, 0), groups, [True, True, True]
            ),
            "cl": lambda: bw(
                dycl, xcl, Wt, [ws[0]], st, (p, p), (1, 1), False, (0, 0), groups, [True, True, True]
            ),
        }
        xl, dl = nhwc(x), nhwc(dy.numpy())
        d_np = dy.numpy()
        ours_f = {
            "NCHW": lambda: ops.conv2d_forward(x, W, None, st, pad, (1, 1), groups, "NCHW", algorithm=alg),
            "NHWC": lambda: ops.conv2d_forward(xl, W, None, st, pad, (1, 1), groups, "NHWC", algorithm=alg),
        }
        ours_b = {
            "NCHW": lambda: ops.conv2d_backward(
                d_np, x, W, st, pad, (1, 1), groups, "NCHW", True, algorithm=alg
            ),
            "NHWC": lambda: ops.conv2d_backward(
                dl, xl, W, st, pad, (1, 1), groups, "NHWC", True, algorithm=alg
            ),
        }
        from fastconv.backends.numba.algorithms import choose_algorithm

        alg = choose_algorithm("forward", xs, ws, st, pad, (1, 1), args.dtype, groups, "NCHW")
        for direction, theirs, ours in (("forward", t_f, ours_f), ("backward", t_b, ours_b)):
            res = {}
            for _ in range(2):  # interleaved rounds
                for k, fn in list(theirs.items()) + list(ours.items()):
                    res[k] = min(res.get(k, 1e9), _best(fn, args.repeat))
            torch_best = min(res["nchw"], res["cl"])
            print(
                f"{name:34s} {direction:8s} torch nchw {res['nchw'] * 1e3:7.2f} cl {res['cl'] * 1e3:7.2f} | "
                f"ours NCHW {res['NCHW'] * 1e3:7.2f} NHWC {res['NHWC'] * 1e3:7.2f} ms | "
                f"torch/ours NCHW {torch_best / res['NCHW']:5.2f} NHWC {torch_best / res['NHWC']:5.2f} | "
                f"NHWC/NCHW {res['NHWC'] / res['NCHW']:5.2f}",
                flush=True,
            )

    def transposed_case(name, xs, ws, stride, p, op):  # type: ignore[no-untyped-def]
        # conv_transpose2d(x, W) = conv2d_backward_data(x as dout, W, y_shape, pad with op at the bottom/right)
        x = rng.standard_normal(xs).astype(dt)
        W = rng.standard_normal(ws).astype(dt)  # (C_in, C_out, kh, kw)
        xt, Wt = torch.from_numpy(x), torch.from_numpy(W)
        y = torch.nn.functional.conv_transpose2d(xt, Wt, None, stride, p, op)
        ys = tuple(y.shape)
        pad4 = (p, p - op, p, p - op)
        assert min(pad4) >= 0
        st = (stride, stride)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        xl = nhwc(x)
        ys_nhwc = (ys[0], ys[2], ys[3], ys[1])
        mine = ops.conv2d_backward_data(x, W, ys, st, pad4, (1, 1), 1, "NCHW")
        assert np.allclose(mine, y.numpy(), rtol=1e-3, atol=1e-3 * float(np.abs(y.numpy()).max()))
        fns = {
            "nchw": lambda: torch.nn.functional.conv_transpose2d(xt, Wt, None, stride, p, op),
            "cl": lambda: torch.nn.functional.conv_transpose2d(xcl, Wt, None, stride, p, op),
            "NCHW": lambda: ops.conv2d_backward_data(x, W, ys, st, pad4, (1, 1), 1, "NCHW"),
            "NHWC": lambda: ops.conv2d_backward_data(xl, W, ys_nhwc, st, pad4, (1, 1), 1, "NHWC"),
        }
        res = {}
        for _ in range(2):
            for k, fn in fns.items():
                res[k] = min(res.get(k, 1e9), _best(fn, args.repeat))
        torch_best = min(res["nchw"], res["cl"])
        print(
            f"{name:34s} {'transp.':8s} torch nchw {res['nchw'] * 1e3:7.2f} cl {res['cl'] * 1e3:7.2f} | "
            f"ours NCHW {res['NCHW'] * 1e3:7.2f} NHWC {res['NHWC'] * 1e3:7.2f} ms | "
            f"torch/ours NCHW {torch_best / res['NCHW']:5.2f} NHWC {torch_best / res['NHWC']:5.2f}",
            flush=True,
        )

    cases = [
        (
            "depthwise 3x3 s1 x(32,64,28,28)",
            lambda: conv_case("depthwise 3x3 s1 x(32,64,28,28)", (32, 64, 28, 28), (64, 1, 3, 3), 1, 1, 64),
        ),
        (
            "depthwise 3x3 s2 x(32,64,28,28)",
            lambda: conv_case("depthwise 3x3 s2 x(32,64,28,28)", (32, 64, 28, 28), (64, 1, 3, 3), 2, 1, 64),
        ),
        (
            "grouped g4 3x3 x(32,64,28,28)",
            lambda: conv_case("grouped g4 3x3 x(32,64,28,28)", (32, 64, 28, 28), (64, 16, 3, 3), 1, 1, 4),
        ),
        (
            "dense 3x3 x(32,64,28,28)",
            lambda: conv_case("dense 3x3 x(32,64,28,28)", (32, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1),
        ),
        (
            "convT k4 s2 x(32,64,14,14)",
            lambda: transposed_case("convT k4 s2 x(32,64,14,14)", (32, 64, 14, 14), (64, 32, 4, 4), 2, 1, 0),
        ),
        (
            "convT k3 s2 op1 x(32,64,14,14)",
            lambda: transposed_case(
                "convT k3 s2 op1 x(32,64,14,14)", (32, 64, 14, 14), (64, 32, 3, 3), 2, 1, 1
            ),
        ),
    ]
    for name, run in cases:
        if args.only in name:
            run()


if __name__ == "__main__":
    main()
