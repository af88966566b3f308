"""Put a ``fastconv bench`` run's tables into BENCHMARKS.md, between its markers.

    fastconv bench --threads 2 --dtype float32,float64 --json benchmarks/results/cpu-2threads.json
    python benchmarks/write_benchmarks_md.py benchmarks/results/cpu-2threads.json [--out BENCHMARKS.md]

The run's JSON is rendered as ``fastconv bench --from-json`` prints it (header with date, machine,
versions and command, then the tables) and replaces only the text between the lines
``<!-- fastconv-bench:start -->`` and ``<!-- fastconv-bench:end -->``: the prose around it is
kept, and must be checked by hand against the new numbers. A file that does not exist yet is
created with the markers around the tables; an existing file without both markers is left alone
(exit status 2), so its prose is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

MARK_START, MARK_END = "<!-- fastconv-bench:start -->", "<!-- fastconv-bench:end -->"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_block(text: str, body: str) -> str:
    """``text`` with everything between ``MARK_START`` and ``MARK_END`` replaced by ``body``.

    Raises ValueError when ``text`` does not hold both markers in that order.
    """
    start, end = text.find(MARK_START), text.find(MARK_END)
    if not 0 <= start < end:
        raise ValueError(f"it has no {MARK_START} ... {MARK_END} block")
    return text[: start + len(MARK_START)] + "\n" + body + "\n" + text[end:]


def write_block(path: Path, body: str) -> None:
    """Replace the marked block of the file at ``path`` with ``body`` (atomically), or create the
    file with the markers around ``body`` when it does not exist."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = f"{MARK_START}\n{MARK_END}\n"
    new = replace_block(old, body)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Render the run and rewrite the block; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="JSON written by `fastconv bench --json`")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="markdown file to update (default: the checkout's BENCHMARKS.md)",
    )
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic shown in the tables (default median)",
    )
    args = parser.parse_args(argv)
    from fastconv.bench.report import render  # here, not at import: asv imports every module of benchmarks/

    try:
        doc = json.loads(args.run.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise ValueError("it has no 'results' list")
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {str(args.run)!r} as a fastconv bench JSON file: {exc}")
    try:
        write_block(args.out, render(doc, args.stat))
    except ValueError as exc:
        parser.error(f"--out {str(args.out)!r}: {exc}; add the two marker lines where the tables go")
    print(f"{args.out}: tables of {args.run} written between the fastconv-bench markers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
