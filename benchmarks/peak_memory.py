"""Peak extra memory of one convolution forward + backward, fastconv numba (per algorithm) vs PyTorch.

PyTorch is measured twice: NCHW tensors ("torch") and channels-last ones ("torch[channels_last]",
inputs converted before the baseline), ``F.conv2d`` then ``aten.convolution_backward`` (dx, dW, db).

Each candidate runs in its own fresh subprocess: it allocates the inputs (x, W, b, dout), runs one
forward + backward as warm-up (JIT compilation, first-touch pools), drops the outputs, and takes
the resident set size (RSS) as its baseline. It then resets the kernel's peak-RSS mark (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0), runs ``y = conv2d(...)`` then ``dx, dW, db =
conv2d_backward(...)`` keeping every output alive, and reports ``VmHWM - baseline`` from
/proc/self/status: the most memory the pair ever held beyond the inputs, whoever allocated it
(NumPy, numba's NRT, oneDNN, BLAS), with no sampling gaps. Where clear_refs cannot be written, a
thread samples /proc/self/statm every 1 ms instead (that can miss short peaks while a kernel holds
the GIL; the table says which method ran). The children run with ``MALLOC_MMAP_THRESHOLD_=131072``
so that glibc returns freed large blocks to the system at once: otherwise memory freed by the
warm-up would stay resident, inflate the baseline and hide the peak.

"outputs" is what y, dx, dW and db take in themselves (the same for every candidate); "extra" is
the peak minus the outputs: workspace (im2col columns, Winograd tiles, reorders, temporaries).

Usage::

    python benchmarks/peak_memory.py [--shapes S4,S5] [--threads 2] [--algorithms auto,gemm,winograd,...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

MiB = 1 << 20
ALGORITHMS = ("auto", "gemm", "winograd", "winograd2", "direct")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _hwm() <= _rss() + 4 * MiB
    except OSError:
        return False


class _Sampler:
    """Max RSS seen by a thread reading /proc/self/statm every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak, self._stop = interval, _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _calls(candidate: str, case: Any, threads: int) -> tuple[Any, Any]:
    """(forward, backward) for the candidate; raise ValueError for an algorithm the shape cannot take."""
    import numpy as np

    from fastconv.bench.cases import conv_inputs

    a = conv_inputs(case, np.float32)
    s, p = case.stride, case.pad
    if candidate.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        fmt = torch.channels_last if candidate == "torch[channels_last]" else torch.contiguous_format
        t = {k: torch.from_numpy(v) for k, v in a.items()}
        t = {k: v.contiguous(memory_format=fmt) if v.dim() == 4 else v for k, v in t.items()}
        aten = torch.ops.aten

        def fwd() -> Any:
            return torch.nn.functional.conv2d(t["x"], t["W"], t["b"], s, p)

        def bwd() -> Any:
            return aten.convolution_backward(
                t["dout"], t["x"], t["W"], [case.w_shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                [True, True, True],
            )  # fmt: skip

        return fwd, bwd
    import fastconv

    fastconv.configure(threads=threads)
    alg = candidate.split("[", 1)[1].rstrip("]") if "[" in candidate else None
    kw: dict[str, Any] = {"backend": "numba"}
    if alg:
        kw["algorithm"] = alg

    def fwd() -> Any:
        return fastconv.conv2d(a["x"], a["W"], a["b"], s, p, **kw)

    def bwd() -> Any:
        return fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, **kw)

    return fwd, bwd


def child(candidate: str, shape: str, threads: int) -> dict[str, Any]:
    """Measure one candidate on one shape in this (fresh) process."""
    from fastconv.bench.cases import BY_NAME

    case = BY_NAME[shape]
    try:
        fwd, bwd = _calls(candidate, case, threads)
        fwd(), bwd()  # warm-up: compilation, pools; also raises for an unsupported algorithm
    except ValueError as exc:
        return {"candidate": candidate, "shape": shape, "note": f"not supported: {exc}"}
    gc.collect()
    alg = None
    if not candidate.startswith("torch"):
        import fastconv

        forced = candidate.split("[", 1)[1].rstrip("]") if "[" in candidate else None
        if forced and forced != "auto":
            alg = forced
        else:
            st, p = case.stride, case.pad
            names = [
                fastconv.conv_algorithm(
                    case.x_shape, case.w_shape, st, p, 1, "float32", direction=d, backend="numba"
                )
                for d in ("forward", "backward")
            ]
            alg = names[0] if names[0] == names[1] else "/".join(names)
    base = _rss()
    method = "VmHWM" if _reset_hwm() else "statm sampling (1 ms)"
    if method == "VmHWM":
        y = fwd()
        grads = bwd()
        peak = _hwm()
    else:
        with _Sampler() as sampler:
            y = fwd()
            grads = bwd()
        peak = sampler.peak
    outs = [y, *grads]
    out_bytes = sum(
        int(o.nbytes) if hasattr(o, "nbytes") else int(o.numel() * o.element_size()) for o in outs
    )
    return {
        "candidate": candidate,
        "shape": shape,
        "what": case.describe(),
        "algorithm": alg,
        "peak_mib": (peak - base) / MiB,
        "outputs_mib": out_bytes / MiB,
        "extra_mib": (peak - base - out_bytes) / MiB,
        "method": method,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="S4,S5", help="conv cases (default S4,S5)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every candidate (default 2)")
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="fastconv numba algorithms to measure, as numba[ALG] (default: all; n/s where not supported)",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--child", nargs=2, metavar=("CANDIDATE", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return 0

    import importlib.util

    shapes = [s.strip().upper() for s in args.shapes.split(",") if s.strip()]
    algs = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    candidates = [f"numba[{a}]" for a in algs]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        candidates += ["torch", "torch[channels_last]"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for shape in shapes:
        for cand in candidates:
            done = subprocess.run(
                [sys.executable, __file__, "--child", cand, shape, "--threads", str(args.threads)],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            if done.returncode != 0:
                rows.append(
                    {"candidate": cand, "shape": shape, "note": f"failed: {done.stderr.strip()[-300:]}"}
                )
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{shape} {cand}: {rows[-1]}", file=sys.stderr, flush=True)

    methods = sorted({r["method"] for r in rows if r.get("method")})
    print(f"Peak memory of one forward + backward beyond the inputs, MiB, float32, {args.threads} threads.")
    print(
        f"Method: a fresh process per cell; peak RSS over the warmed-up baseline by {', '.join(methods)}.\n"
    )
    print("| shape | case | candidate | algorithm | peak | outputs (y, dx, dW, db) | extra (workspace) |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        if r.get("note"):
            print(f"| {r['shape']} | | {r['candidate']} | {r['note'][:80]} | | | |")
            continue
        print(
            f"| {r['shape']} | {r['what']} | {r['candidate']} | {r['algorithm'] or '-'} | "
            f"{r['peak_mib']:.1f} | {r['outputs_mib']:.1f} | {r['extra_mib']:.1f} |"
        )
    cmd = " ".join(["python", "benchmarks/peak_memory.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n`{cmd}`")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
