"""Start-up costs, each measured in fresh Python processes (samples interleaved where compared):

* import: how much ``import fastconv`` adds to ``import numpy`` (and that numba and cupy stay unimported);
* warm first use: in a process whose numba cache is already filled, the time from the end of
  ``import fastconv`` to the end of the first ``conv2d(backend="numba")``, split into ``import numba``
  and the rest (numba's first-dispatch set-up and the cache load). numba imports ``scipy.linalg``
  on its first dispatch when SciPy is installed; the ``no scipy`` rows hide SciPy from the child
  (as in an environment with only ``fastconv[numba]`` installed);
* cold compile: ``fastconv warmup`` with an empty ``NUMBA_CACHE_DIR``: every kernel for float32
  and float64.

python benchmarks/startup.py [--repeat 15] [--cold 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FIRST_USE = """
import sys, time, json
if {hide_scipy}:
    sys.modules["scipy"] = None  # numba then finds no SciPy, as without it installed
import numpy as np
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
t2 = time.perf_counter()
import numba
t3 = time.perf_counter()
fastconv.conv2d(x, W, backend="numba")
t4 = time.perf_counter()
print(json.dumps({{"import_fastconv": t1 - t0, "import_numba": t3 - t2, "first_call": t4 - t3,
                  "first_use": (t4 - t2)}}))
"""


def _run(code: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout


def _wall(code: str) -> float:
    start = time.perf_counter()
    _run(code)
    return time.perf_counter() - start


def _ms(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1e3:.0f} ms (min {min(values) * 1e3:.0f}, max {max(values) * 1e3:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=15, help="fresh processes per import / first-use figure"
    )
    parser.add_argument("--cold", type=int, default=1, help="cold compiles to time (about 20 s each here)")
    args = parser.parse_args()

    numpy_s, fastconv_s = [], []
    for _ in range(args.repeat):
        numpy_s.append(_wall("import numpy"))
        fastconv_s.append(_wall("import fastconv"))
    a, b = statistics.median(numpy_s), statistics.median(fastconv_s)
    print(f"import numpy     {_ms(numpy_s)}")
    print(f"import fastconv  {_ms(fastconv_s)}: +{(b - a) * 1e3:.0f} ms over numpy")
    loaded = _run("import sys, fastconv; print('numba' in sys.modules, 'cupy' in sys.modules)").split()
    print(f"numba imported by import fastconv: {loaded[0]}; cupy: {loaded[1]}")

    has_scipy = _run("import importlib.util as u; print(u.find_spec('scipy') is not None)").strip() == "True"
    _run(FIRST_USE.format(hide_scipy=False))  # fills the cache (compiles if it was empty)
    _run(FIRST_USE.format(hide_scipy=True))
    rows: dict[str, list[dict[str, float]]] = {"with scipy": [], "no scipy": []}
    for _ in range(args.repeat):
        for label, hide in (("with scipy", False), ("no scipy", True)):
            if label == "with scipy" and not has_scipy:
                continue
            rows[label].append(json.loads(_run(FIRST_USE.format(hide_scipy=hide))))
    for label, samples in rows.items():
        if not samples:
            continue
        parts = ", ".join(
            f"{key.replace('_', ' ')} {statistics.median(s[key] for s in samples) * 1e3:.0f} ms"
            for key in ("import_numba", "first_call")
        )
        print(f"warm first use ({label}): {_ms([s['first_use'] for s in samples])} = {parts}")

    for _ in range(args.cold):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            start = time.perf_counter()
            out = _run("import fastconv.cli as c; c.main(['warmup'])", env=env).strip()
            print(f"cold compile: {time.perf_counter() - start:.1f} s wall for the process; it said: {out}")


if __name__ == "__main__":
    main()
