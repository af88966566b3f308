"""`fastconv train` survives being killed and refuses damaged files.

* SIGKILL at seeded random moments, several times in a row: after each kill the checkpoint loads (or is not
  there yet), and ``--resume`` then ends with a ``model.npz`` equal, bit for bit, to an uninterrupted run's;
* a truncated or bit-flipped checkpoint, parameter file or MNIST IDX file (gzipped or raw) is refused with one
  line naming it (a ValueError from the API; ``fastconv train: error: ...`` and exit status 2 from the CLI),
  or, where the flip hit bytes that hold nothing (a zip timestamp, a gzip mtime), loads unchanged.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastconv.train
from fastconv.train.data import read_idx
from fastconv.train.trainer import CHECKPOINT, OUTPUTS, build_model, load_checkpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="digits needs sklearn")

RUN = "--dataset digits --epochs 4 --no-plots --no-progress --backend numpy --seed 5".split()
TIMEOUT = 120  # seconds for any one subprocess; a run takes a few
HEADER = "epoch  train loss"  # the table header, printed when the epochs start
# One BLAS thread: the same sums in every process, and no oversubscribed cores.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "FASTCONV_BACKEND"},
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fastconv", "train", *RUN, "--out", str(out), *extra]


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out, *extra), env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def _history(path: Path) -> list[list[str]]:
    with open(path) as f:
        return [[row[k] for k in row if k != "seconds"] for row in csv.DictReader(f)]


# -- SIGKILL ---------------------------------------------------------------------------------------------
class _Run:
    """``fastconv train`` in a subprocess whose output lines are read as they come."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            _command(out, *extra), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = TIMEOUT) -> bool:
        """True once a line for which ``wanted(line)`` holds has been printed; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                return False
            self.output.append(line)
            if wanted(line):
                return True

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=TIMEOUT)


def _header(line: str) -> bool:
    return line.startswith(HEADER)


def _epoch_row(after: int) -> Callable[[str], bool]:
    """Matches the table row of an epoch after ``after`` (a resumed run first reprints the earlier ones)."""
    return lambda line: bool(re.match(r"^ *(\d+) ", line)) and int(line.split()[0]) > after


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, float]:
    """The --out directory of an uninterrupted run, and the seconds one of its epochs took."""
    out = tmp_path_factory.mktemp("reference")
    run = _Run(out)
    assert run.wait_for(_header), "".join(run.output)
    start = time.monotonic()
    assert run.wait_for(_epoch_row(0)), "".join(run.output)
    epoch_seconds = time.monotonic() - start
    assert run.proc.wait(timeout=TIMEOUT) == 0, "".join(run.output)
    return out, epoch_seconds


@pytest.fixture
def reference(reference_run) -> Path:
    """The --out directory of an uninterrupted run: history.csv, model.npz and checkpoint.npz."""
    return reference_run[0]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_training_killed_at_random_moments_resumes_to_the_uninterrupted_result_bit_for_bit(
    reference_run, tmp_path
):
    reference_out, epoch_seconds = reference_run
    rng = np.random.default_rng(20240917)
    out = tmp_path / "killed"
    epochs_done, killed = 0, 0
    for _ in range(6):
        run = _Run(out, *(["--resume"] if (out / CHECKPOINT).is_file() else []))
        # A seeded random moment before the last epoch ends: after 0 or more of the epochs left but one, either
        # at once (while the checkpoint of the epoch just printed is being written) or within the next epoch.
        if epochs_done < 4:
            assert run.wait_for(_header), "".join(run.output)
            rows = int(rng.integers(0, 4 - epochs_done))
            for _ in range(rows):
                assert run.wait_for(_epoch_row(epochs_done)), "".join(run.output)
            at_once = rows > 0 and rng.random() < 0.5
            time.sleep(rng.uniform(0.0, 0.005) if at_once else rng.uniform(0.0, 0.7) * epoch_seconds)
        code = run.kill()
        assert code in (0, -signal.SIGKILL), "".join(run.output)
        killed += code == -signal.SIGKILL
        if (out / CHECKPOINT).is_file():
            meta, _, _ = load_checkpoint(out / CHECKPOINT)  # whole: it is written atomically
            assert epochs_done <= meta["epoch"] <= 4
            epochs_done = meta["epoch"]
        # Besides the outputs, at most the temporaries of the writer just killed.
        leftovers = {p.name for p in out.iterdir()} - set(OUTPUTS)
        pattern = re.compile(rf"^\.({'|'.join(map(re.escape, OUTPUTS))})\.{run.proc.pid}\.[0-9a-f]+\.tmp$")
        assert all(pattern.match(name) for name in leftovers), leftovers
    assert killed >= 3
    final = _train(out, *(["--resume"] if (out / CHECKPOINT).is_file() else []))
    assert final.returncode == 0, final.stderr
    assert {p.name for p in out.iterdir()} == {CHECKPOINT, "model.npz", "history.csv"}  # no temporaries left
    with np.load(reference_out / "model.npz") as a, np.load(out / "model.npz") as b:
        assert a.files == b.files
        for k in a.files:
            assert a[k].tobytes() == b[k].tobytes(), k
    assert _history(out / "history.csv") == _history(reference_out / "history.csv")


# -- damaged files -----------------------------------------------------------------------------------------
def _offsets(rng: np.random.Generator, size: int, count: int = 30) -> list[int]:
    """A seeded sample of byte offsets: a third in the first 128 bytes (zip and npy headers, gzip and IDX
    headers), a third in the last 256 (the zip directory, the gzip trailer), a third anywhere."""
    head = rng.integers(0, min(size, 128), count // 3)
    tail = rng.integers(max(0, size - 256), size, count // 3)
    anywhere = rng.integers(0, size, count - 2 * (count // 3))
    return sorted({int(o) for o in np.concatenate([head, tail, anywhere])})


def _truncations(size: int) -> list[int]:
    return sorted({0, 1, 3, 10, 30, size // 3, size // 2, size - 22, size - 1})


def _damaged(data: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """(what, bytes): one flipped bit at each sampled offset, then each truncation."""
    cases = []
    for offset in _offsets(rng, len(data)):
        bit = int(rng.integers(8))
        flipped = bytearray(data)
        flipped[offset] ^= 1 << bit
        cases.append((f"bit {bit} of byte {offset} flipped", bytes(flipped)))
    cases += [(f"cut to {n} bytes", data[:n]) for n in _truncations(len(data))]
    return cases


def _refused_or_unchanged(
    load: Callable[[Path], Any], path: Path, cases: list[tuple[str, bytes]], same: Callable[[Any], bool]
) -> int:
    """Write each damaged version to ``path`` and load it: a one-line ValueError naming the file, or the
    original content. Returns how many were refused."""
    refused = 0
    for what, data in cases:
        path.write_bytes(data)
        try:
            loaded = load(path)
        except ValueError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, (what, message)
            refused += 1
        else:
            assert same(loaded), f"{what}: loaded without an error, but not the original content"
    return refused


def _same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_a_damaged_checkpoint_is_refused_with_one_line(reference, tmp_path, rng):
    original = load_checkpoint(reference / CHECKPOINT)
    cases = _damaged((reference / CHECKPOINT).read_bytes(), rng)

    def same(loaded) -> bool:
        return (
            loaded[0] == original[0]
            and _same_arrays(loaded[1], original[1])
            and loaded[2].keys() == original[2].keys()
            and all(_same_arrays(loaded[2][s], original[2][s]) for s in loaded[2])
        )

    refused = _refused_or_unchanged(load_checkpoint, tmp_path / CHECKPOINT, cases, same)
    assert refused >= len(cases) // 2


def test_a_damaged_parameter_file_is_refused_by_load_params_with_one_line(reference, tmp_path, rng):
    net = build_model("simple", (1, 8, 8), np.random.default_rng(0), np.float32, None)
    with np.load(reference / "model.npz") as z:
        original = {k: z[k] for k in z.files}
    cases = _damaged((reference / "model.npz").read_bytes(), rng)

    def load(path: Path) -> dict[str, np.ndarray]:
        net.load_params(path)
        return {k: np.array(v) for k, v in net.params.items()}

    refused = _refused_or_unchanged(load, tmp_path / "model.npz", cases, lambda p: _same_arrays(p, original))
    assert refused >= len(cases) // 2


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "raw"])
def test_a_damaged_mnist_file_is_refused_with_one_line(mnist_dir, tmp_path, rng, gzipped):
    data = (mnist_dir / f"{LABELS}.gz").read_bytes()
    if not gzipped:
        data = gzip.decompress(data)
    path = tmp_path / (LABELS + (".gz" if gzipped else ""))
    path.write_bytes(data)
    original = read_idx(path)
    refused = _refused_or_unchanged(
        read_idx, path, _damaged(data, rng), lambda a: np.array_equal(a, original)
    )
    assert refused >= 20


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_fastconv_train_refuses_a_damaged_checkpoint_or_mnist_file_with_one_error_line(
    reference, mnist_dir, tmp_path, capsys, damage
):
    def spoil(path: Path) -> None:
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x10  # inside a stored array (the checkpoint) or the deflate stream
        path.write_bytes(bytes(data) if damage == "flip" else bytes(data[: len(data) // 2]))

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    spoil(out / CHECKPOINT)
    assert fastconv.train.main([*RUN, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"fastconv train: error: {re.escape(str(out / CHECKPOINT))}: [^\n]*corrupt[^\n]*\n", err
    )

    data = tmp_path / "mnist"
    data.mkdir()
    for name in (IMAGES, LABELS):
        shutil.copy(mnist_dir / f"{name}.gz", data)
    spoil(data / f"{IMAGES}.gz")
    args = ["--dataset", "mnist", "--data", str(data), "--epochs", "1", "--no-plots", "--no-progress"]
    assert fastconv.train.main([*args, "--out", str(tmp_path / "mnist-run")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"fastconv train: error: {re.escape(str(data / IMAGES))}\.gz: [^\n]+\n", err)


def test_the_fastconv_command_exits_with_status_2_and_one_line_for_a_truncated_checkpoint(
    reference, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / CHECKPOINT).write_bytes((reference / CHECKPOINT).read_bytes()[:1000])
    proc = _train(out, "--resume")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"fastconv train: error: {out / CHECKPOINT}: corrupt checkpoint (truncated")
