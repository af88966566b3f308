"""nox sessions: `nox -s tests lint`, `nox -s bench`, `nox -s asv`, `nox -s gpu`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (the README's test command)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "fastconv", "tests", "benchmarks", "noxfile.py")


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU runbook: the `gpu` tests, then conv and max pool timed against PyTorch/cuDNN on the same device."""
    session.install("-e", ".[test,cuda12]")
    session.run("python", "-m", "fastconv.gpu_runbook", *session.posargs)
