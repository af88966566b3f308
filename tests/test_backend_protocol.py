"""The backend contract as a ``typing.Protocol``: mypy accepts the three built-in backend modules as
``fastconv.backends.Backend`` and rejects incomplete ones; ``isinstance`` agrees at run time.

mypy runs once per session on the small files in ``tests/typing/`` (not on fastconv itself: imported
modules are analysed for their types, their own errors are not reported), with a fresh cache under
the pytest tmp path; it needs no network.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastconv.backends import Backend

ROOT = Path(__file__).resolve().parents[1]
TYPING = ROOT / "tests" / "typing"
SATISFY = TYPING / "backends_satisfy_protocol.py"
REJECTED = TYPING / "incomplete_backends_rejected.py"
BUILTINS = ("numpy", "numba", "cupy")

MYPY_CONFIG = """\
[mypy]
mypy_path = {root}
follow_imports = silent
ignore_missing_imports = True
warn_unused_ignores = True

# Their internals are not part of any backend's signature: skipping them keeps mypy at a few seconds.
[mypy-numba.*,cupy.*,cupyx.*,threadpoolctl.*]
follow_imports = skip
"""

_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<text>.*)$")


def _builtin_params(*, runtime: bool) -> list:
    return [pytest.param(name) for name in BUILTINS]


def _line_of(path: Path, text: str) -> int:
    """Number of the one line of ``path`` that contains ``text``."""
    found = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    assert len(found) == 1, f"{text!r} should be on exactly one line of {path}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def mypy_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[Path, int], list[str]]:
    """mypy's errors and notes on the files in tests/typing, by (file, line); run once per module."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the protocol checks: install mypy (it is in the test extra)")
        pytest.skip("mypy is not installed (pip install mypy, or the package's test extra)")
    tmp = tmp_path_factory.mktemp("mypy")
    config = tmp / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(root=ROOT))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp / "cache")]
    cmd += ["--no-error-summary", "--show-absolute-path", "--hide-error-context", "--no-pretty"]
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    proc = subprocess.run(
        [*cmd, str(SATISFY), str(REJECTED)], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode in (0, 1), f"mypy crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    messages: dict[tuple[Path, int], list[str]] = {}
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        assert m, f"unexpected mypy output line: {line!r}\n{proc.stdout}"
        key = (Path(m["path"]).resolve(), int(m["line"]))
        messages.setdefault(key, []).append(f"{m['kind']}: {m['text']}")
    return messages


@pytest.mark.parametrize("name", _builtin_params(runtime=False))
def test_mypy_accepts_each_builtin_backend_module_as_a_backend(mypy_messages, name):
    line = _line_of(SATISFY, f": Backend = {name}_backend")
    assert mypy_messages.get((SATISFY, line)) is None, "\n".join(mypy_messages[(SATISFY, line)])


@pytest.mark.parametrize(
    ("assignment", "member"),
    [("missing_a_kernel: Backend", "maxpool2d_backward"), ("wrong_signature: Backend", "def im2col(")],
)
def test_mypy_rejects_an_incomplete_backend_module_and_names_the_member(mypy_messages, assignment, member):
    messages = mypy_messages.get((REJECTED, _line_of(REJECTED, assignment)), [])
    assert any(m.startswith("error: Incompatible types in assignment") for m in messages), messages
    assert any(member in m for m in messages), messages


def test_mypy_reports_nothing_else(mypy_messages):
    expected = {
        (REJECTED, _line_of(REJECTED, a)) for a in ("missing_a_kernel: Backend", "wrong_signature: Backend")
    }
    expected |= {(SATISFY, _line_of(SATISFY, f": Backend = {name}_backend")) for name in BUILTINS}
    unexpected = {key: msgs for key, msgs in mypy_messages.items() if key not in expected}
    assert not unexpected, unexpected


@pytest.mark.parametrize("name", _builtin_params(runtime=True))
def test_each_builtin_backend_module_is_an_instance_of_the_runtime_checkable_protocol(name):
    assert isinstance(importlib.import_module(f"fastconv.backends.{name}"), Backend)


def test_a_module_missing_a_kernel_is_not_an_instance_of_the_protocol():
    spec = importlib.util.spec_from_file_location(
        "backend_missing_a_kernel", TYPING / "backend_missing_a_kernel.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not isinstance(module, Backend)
