"""nox sessions: `nox -s tests lint`, `nox -s bench`, `nox -s asv`, `nox -s gpu`."""

from __future__ import annotations

import nox

ASV = ("--config", "benchmarks/asv.conf.json")
ASV_SMOKE = "'float32', '(S1|P1|T1)'\\)"  # a few cheap benchmarks, one quick repeat

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
    session.run("ruff", "format", "--check", "fastconv", "tests", "benchmarks", "noxfile.py")


@nox.session
def gpu(session: nox.Session) -> None:
    """On a machine with an NVIDIA GPU: the `gpu` tests, then the cupy backend timed against PyTorch's cuDNN.

    `nox -s gpu -- --shapes S1,S4,P3 --json gpu.json` passes its arguments to `fastconv bench`; `--tf32`
    lets PyTorch use TF32 (off by default, so both sides compute in true float32).
    """
    session.install("-e", ".[test,cuda12]")
    # PyTorch is a peer, never a dependency: with CUDA it joins as torch-cuda; if it does not install,
    # the cupy backend is timed alone.
    session.run("python", "-m", "pip", "install", "--quiet", "torch==2.13.0", success_codes=[0, 1])
    session.run("python", "-m", "pytest", "-m", "gpu", "tests")
    session.run("fastconv", "bench", "--backends", "cupy", "--dtype", "float32", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark on every backend (+ PyTorch CPU); `-- --benchmark-disable` is the CI smoke."""
    session.install("-e", ".[numba,bench]")
    session.run("python", "-m", "pip", "install", "--quiet", "torch==2.13.0", success_codes=[0, 1])
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks/pytest_suite",
        "-p",
        "no:cacheprovider",
        "--benchmark-group-by=group",
        "--benchmark-columns=median,min,max,rounds",
        "--benchmark-sort=mean",
        *session.posargs,
        env={"FASTCONV_BENCH_THREADS": "2"},
    )


@nox.session
def asv(session: nox.Session) -> None:
    """`nox -s asv`: this checkout; `-- continuous BASE HEAD`: two commits; `-- smoke`: the CI smoke run."""
    session.install("-e", ".[numba,bench]")
    session.run("asv", "machine", "--yes", *ASV)
    args = list(session.posargs)
    if args[:1] == ["smoke"]:
        session.run("asv", "check", *ASV, "-E", "existing")
        session.run(
            "asv",
            "run",
            *ASV,
            "-E",
            "existing",
            "--quick",
            "--dry-run",
            "--show-stderr",
            "--bench",
            ASV_SMOKE,
            *args[1:],
        )
    elif args[:1] == ["continuous"]:
        base, head = args[1:3] + ["main", "HEAD"][len(args[1:3]) :]
        session.run(
            "asv",
            "continuous",
            *ASV,
            "-E",
            "virtualenv",
            "--factor",
            "1.2",
            "--show-stderr",
            base,
            head,
            *args[3:],
        )
    else:
        session.run("asv", "run", *ASV, "-E", "existing", "--set-commit-hash", "HEAD", "--show-stderr", *args)
