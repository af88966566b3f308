"""No input crashes the process: bad input gets a clear error naming the argument, inputs unchanged.

The cases are in ``bad_inputs.py`` (one per kind of bad input, every public function and layer). The
ones that pass the functional API's checks and reach a backend's kernel run in a child process, so a
crash (the numba backend once wrote out of bounds for an argmax outside the window) fails the test.
Also here: empty batches and channel counts of zero, which every backend answers like NumPy and
PyTorch, with an empty result of the right shape.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CASES, run_case

import fastconv
from fastconv.testing import reference as ref

HERE = Path(__file__).resolve().parent
IN_PROCESS = [c for c in CASES if not c.in_kernel]
IN_KERNEL = [c for c in CASES if c.in_kernel]


def test_the_battery_covers_at_least_thirty_kinds_of_bad_input():
    assert len({c.id for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_bad_input_gets_a_clear_error_and_leaves_the_inputs_unchanged(backend, case):
    if case.id == "conv-x-torch-tensor" and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed: no tensor to pass")
    out = run_case(case, backend)
    errors = case.error if isinstance(case.error, tuple) else (case.error,)
    assert out["raised"] in {e.__name__ for e in errors}, out
    assert out["message"] and "\n" not in out["message"], out
    assert re.search(case.match, out["message"]), (case.match, out["message"])
    assert out["unchanged"], f"{case.id}: an input was modified"


def test_bad_input_that_reaches_a_kernel_is_refused_in_a_child_process_that_survives(backend):
    """Run in a fresh process: a crash there is this test's failure, with the case that caused it."""
    done = subprocess.run(
        [sys.executable, str(HERE / "bad_inputs.py"), backend],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    started = [line["start"] for line in lines if "start" in line]
    results = {line["id"]: line for line in lines if "id" in line}
    crashed = next((case for case in started if case not in results), None)
    assert done.returncode == 0 and crashed is None, (
        f"the child process died (status {done.returncode}) in case {crashed}:\n{done.stderr[-3000:]}"
    )
    assert set(results) == {c.id for c in IN_KERNEL}
    for case in IN_KERNEL:
        out = results[case.id]
        assert "setup_error" not in out, out["setup_error"]
        assert out["raised"] == case.error.__name__, out
        assert re.search(case.match, out["message"]), (case.match, out["message"])
        assert out["unchanged"], f"{case.id}: an input was modified"


# -- empty inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, c", [(0, 3), (2, 0), (0, 0)], ids=["no-images", "no-channels", "neither"])
def test_an_empty_batch_or_no_channels_gives_results_of_the_right_shape(on, rng, n, c):
    x = rng.standard_normal((n, c, 7, 6))
    W = rng.standard_normal((4, c, 3, 2))
    b = rng.standard_normal(4)
    stride, pad = (2, 1), (1, 0)
    y = on.host(fastconv.conv2d(*on(x, W, b), stride, pad))
    np.testing.assert_allclose(y, ref.conv2d(x, W, b, stride, pad))  # the bias alone, or nothing
    dout = rng.standard_normal(y.shape)
    dx, dW, db = (on.host(g) for g in fastconv.conv2d_backward(*on(dout, x, W), stride, pad))
    for got, want in zip((dx, dW, db), ref.conv2d_backward(dout, x, W, stride, pad)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want)
    yp, argmax = fastconv.max_pool2d(on(x), 2)
    assert yp.shape == argmax.shape == (n, c, 3, 3) and argmax.dtype == np.int32
    dxp = on.host(fastconv.max_pool2d_backward(on(rng.standard_normal((n, c, 3, 3))), argmax, x.shape, 2))
    np.testing.assert_array_equal(dxp, np.zeros(x.shape))
    col = on.host(fastconv.im2col(on(x), 3, 2, 2, 1))
    assert col.shape == (n * 4 * 4, c * 6)
    np.testing.assert_array_equal(on.host(fastconv.col2im(on(col), x.shape, 3, 2, 2, 1)), np.zeros(x.shape))


def test_layers_pass_an_empty_batch_through(on, rng):
    from fastconv.layers import Convolution, Pooling

    conv = Convolution(*on(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)), pad=1)
    pool = Pooling(2, 2, 2)
    x = on(rng.standard_normal((0, 3, 8, 8)))
    y = pool.forward(conv.forward(x))
    assert y.shape == (0, 4, 4, 4)
    dx = conv.backward(pool.backward(y))
    assert dx.shape == (0, 3, 8, 8) and on.host(conv.dW).shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(on.host(conv.dW), 0)
