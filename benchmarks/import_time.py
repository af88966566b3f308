"""How much `import fastconv` adds to `import numpy`, in fresh processes, samples interleaved.

python benchmarks/import_time.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    numpy_s, fastconv_s = [], []
    for _ in range(args.repeat):
        numpy_s.append(_once("import numpy"))
        fastconv_s.append(_once("import fastconv"))
    a, b = statistics.median(numpy_s), statistics.median(fastconv_s)
    print(
        f"import numpy {a * 1e3:.1f} ms, import fastconv {b * 1e3:.1f} ms "
        f"(medians of {args.repeat}, interleaved): +{(b - a) * 1e3:.1f} ms"
    )
    check = "import sys, fastconv; print('numba' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    ).stdout.split()
    print(f"numba imported: {out[0]}, cupy imported: {out[1]}")


if __name__ == "__main__":
    main()
