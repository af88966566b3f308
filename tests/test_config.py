"""fastconv.configure: process-wide settings through one function, validated, restorable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _config


def test_configure_returns_a_handle_that_restores_the_previous_settings():
    before = fastconv.get_config()
    with fastconv.configure(gemm_threads="split") as handle:
        assert fastconv.get_config()["gemm_threads"] == "split"
        assert "gemm_threads='split'" in repr(handle)
    assert fastconv.get_config() == before


def test_configure_applies_at_once_without_a_with_block():
    before = fastconv.get_config()["gemm_threads"]
    try:
        fastconv.configure(gemm_threads="split")
        assert fastconv.get_config()["gemm_threads"] == "split"
    finally:
        fastconv.configure(gemm_threads=before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threads": 0}, r"threads must be a positive int, got 0"),
        ({"threads": 2.0}, r"threads must be a positive int, got 2\.0"),
        ({"gemm_threads": "auto"}, r"gemm_threads must be one of 'blas', 'split', got 'auto'"),
    ],
)
def test_configure_refuses_bad_values_and_changes_nothing(kwargs, message):
    before = fastconv.get_config()
    with pytest.raises(ValueError, match=message):
        fastconv.configure(**kwargs)
    assert fastconv.get_config() == before


def test_configure_threads_in_a_with_block_restores_the_thread_counts_it_found():
    pytest.importorskip("numba")
    from threadpoolctl import threadpool_info

    from fastconv.backends.numba import runtime

    def counts():
        return runtime.num_threads(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before, config = counts(), fastconv.get_config()
    with fastconv.configure(threads=1):
        assert counts()[0] == 1 and set(counts()[1]) == {1}
        assert fastconv.get_config()["threads"] == 1
    assert counts() == before
    assert fastconv.get_config() == config


def test_configure_takes_keywords_only():
    with pytest.raises(TypeError):
        fastconv.configure(2)  # type: ignore[misc]


def test_split_gemms_give_the_same_convolution_as_one_blas_call(rng):
    pytest.importorskip("numba")
    x, W = rng.standard_normal((4, 3, 9, 9)), rng.standard_normal((5, 3, 3, 3))
    want = fastconv.conv2d(x, W, backend="numba")
    with fastconv.configure(gemm_threads="split"):
        got = fastconv.conv2d(x, W, backend="numba")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_cache_directory_is_per_user_and_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.delenv(_config.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = _config.cache_dir()
    if os.name == "posix" and not os.uname().sysname == "Darwin":
        assert default == tmp_path / "xdg" / "fastconv"
    monkeypatch.setenv(_config.CACHE_ENV, str(tmp_path / "mine"))
    assert _config.cache_dir() == Path(tmp_path / "mine")


def test_the_package_does_not_assign_tuning_globals_any_more():
    """Settings go through fastconv.configure; the old module globals are gone."""
    pytest.importorskip("numba")
    from fastconv.backends import numba as nb

    for name in ("GEMM_THREADS", "set_threads"):
        assert not hasattr(nb, name)
