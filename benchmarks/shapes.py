"""The benchmark shapes for the asv suite, from the working tree's ``fastconv/_bench_shapes.py``.

asv benchmarks old commits with the *current* benchmark suite, so the shapes are loaded from
this checkout's file by path (the single definition, shared with ``fastconv bench`` and the
pytest-benchmark suite), not from the fastconv installed for the commit under test, which may
predate it. Outside a checkout, the installed ``fastconv._bench_shapes`` is used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fastconv" / "_bench_shapes.py"
    if not path.is_file():
        import fastconv._bench_shapes as installed

        return installed
    name = "fastconv_bench_shapes_worktree"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


_shapes = _load()
BY_NAME = _shapes.BY_NAME
CONV_CASES = _shapes.CONV_CASES
POOL_CASES = _shapes.POOL_CASES
TRAIN_CASES = _shapes.TRAIN_CASES
conv_inputs = _shapes.conv_inputs
pool_inputs = _shapes.pool_inputs
build_train_step = _shapes.build_train_step
