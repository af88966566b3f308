"""The benchmark cases for the asv suite, from the working tree's ``fastconv/bench/cases.py``.

asv benchmarks old commits with the *current* benchmark suite, so the cases are loaded from this
checkout's file by path (the single definition, shared with ``fastconv bench`` and the
pytest-benchmark suite), not from the fastconv installed for the commit under test, which may
predate it. Outside a checkout, the installed ``fastconv.bench.cases`` is used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fastconv" / "bench" / "cases.py"
    if not path.is_file():
        import fastconv.bench.cases as installed

        return installed
    name = "fastconv_bench_cases_worktree"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


_cases = _load()
BY_NAME = _cases.BY_NAME
CONV_CASES = _cases.CONV_CASES
POOL_CASES = _cases.POOL_CASES
TRAIN_CASES = _cases.TRAIN_CASES
conv_inputs = _cases.conv_inputs
pool_inputs = _cases.pool_inputs
build_train_step = _cases.build_train_step
