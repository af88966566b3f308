"""Data: to_categorical, the MNIST IDX loader (checks, errors, t10k-only split), downloads, digits."""

from __future__ import annotations

import functools
import gzip
import http.server
import importlib.util
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastconv.train.data import (
    DownloadError,
    download_mnist,
    load_digits_dataset,
    load_mnist,
    load_mnist_dataset,
    read_idx,
    to_categorical,
)

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# Tests of the real MNIST test set take conftest's ``mnist_dir`` fixture: a clone without it skips them
# with the reason; CI always has it, so there a missing copy fails them.


def _raw(mnist_dir: Path, name: str) -> bytes:
    return gzip.decompress((mnist_dir / f"{name}.gz").read_bytes())


# -- to_categorical ---------------------------------------------------------------------------------
def test_to_categorical_sizes_the_classes_from_the_largest_label():
    y = to_categorical([14, 5, 6, 7, 8, 9, 0])
    assert y.shape == (7, 15)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.argmax(axis=1), [14, 5, 6, 7, 8, 9, 0])
    np.testing.assert_array_equal(y.sum(axis=1), np.ones(7))


def test_to_categorical_honours_num_classes_and_refuses_labels_beyond_it():
    assert to_categorical(np.array([[1], [2]]), 4).shape == (2, 4)
    with pytest.raises(ValueError, match="num_classes"):
        to_categorical([0, 5], 3)
    with pytest.raises(ValueError, match="non-negative"):
        to_categorical([-1, 2])
    with pytest.raises(ValueError, match="integer"):
        to_categorical([0.5, 1.0])


# -- MNIST from the real t10k files ---------------------------------------------------------------
def test_mnist_directory_with_only_t10k_splits_8000_and_2000_and_says_so(mnist_dir):
    ds = load_mnist_dataset(mnist_dir)
    assert ds.x_train.shape == (8000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.t_train[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    counts = np.bincount(np.concatenate([ds.t_train, ds.t_test]), minlength=10)
    np.testing.assert_array_equal(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert "first 8,000" in ds.note and "last 2,000" in ds.note
    with pytest.warns(UserWarning, match="only the 10,000-image test set"):
        load_mnist(data_dir=mnist_dir)


def test_load_mnist_has_the_books_options(mnist_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (x, t), (xt, tt) = load_mnist(normalize=False, flatten=True, one_hot_label=True, data_dir=mnist_dir)
    assert x.shape == (8000, 784) and xt.shape == (2000, 784)
    assert x.max() == 255.0
    assert t.shape == (8000, 10) and tt.shape == (2000, 10)
    np.testing.assert_array_equal(t[:3].argmax(axis=1), [7, 2, 1])


def test_read_idx_reads_gzipped_and_raw_files_alike(mnist_dir, tmp_path):
    raw = tmp_path / LABELS
    raw.write_bytes(_raw(mnist_dir, LABELS))
    np.testing.assert_array_equal(read_idx(raw), read_idx(mnist_dir / f"{LABELS}.gz"))


@pytest.mark.parametrize("name", [IMAGES, LABELS])
def test_truncated_file_is_refused_with_a_message_naming_it(mnist_dir, tmp_path, name):
    data = _raw(mnist_dir, name)
    raw = tmp_path / name
    raw.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=f"{name}.*truncated"):
        read_idx(raw)
    gz = tmp_path / "cut" / f"{name}.gz"
    gz.parent.mkdir()
    full = (mnist_dir / f"{name}.gz").read_bytes()
    gz.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(gz)


def test_wrong_magic_number_is_refused(mnist_dir, tmp_path):
    data = bytearray(_raw(mnist_dir, IMAGES))
    data[3] = 0x01  # 2049, the magic of a label file
    bad = tmp_path / IMAGES
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad magic number 2049"):
        read_idx(bad)


def test_corrupt_pixel_fails_the_checksum_unless_verification_is_off(mnist_dir, tmp_path):
    data = bytearray(_raw(mnist_dir, IMAGES))
    data[16 + 300] ^= 0xFF
    bad = tmp_path / f"{IMAGES}.gz"
    bad.write_bytes(gzip.compress(bytes(data), compresslevel=1))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_idx(bad)
    assert read_idx(bad, verify=False).shape == (10000, 28, 28)


def test_missing_mnist_files_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_dataset(tmp_path)


# -- downloads from a local HTTP server -----------------------------------------------------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of an HTTP server on 127.0.0.1 for that directory."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_fetches_verifies_and_loads_the_files(mnist_dir, tmp_path, serve):
    url = serve(mnist_dir)
    cache = tmp_path / "cache"
    previous = os.umask(0o022)
    try:
        paths = download_mnist(cache, [IMAGES, LABELS], base_url=url, verbose=False)
    finally:
        os.umask(previous)
    assert sorted(p.name for p in cache.iterdir()) == [f"{IMAGES}.gz", f"{LABELS}.gz"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o644}  # the umask's, like any download
    assert [p.name for p in paths] == [f"{IMAGES}.gz", f"{LABELS}.gz"]
    ds = load_mnist_dataset(cache)
    assert ds.x_test.shape == (2000, 1, 28, 28)


def test_download_with_a_checksum_mismatch_is_refused_and_leaves_nothing(mnist_dir, tmp_path, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    labels = bytearray(_raw(mnist_dir, LABELS))
    labels[8] = (labels[8] + 1) % 10  # still a valid IDX label file, but not the official one
    (mirror / f"{LABELS}.gz").write_bytes(gzip.compress(bytes(labels)))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_mnist(cache, [LABELS], base_url=serve(mirror), verbose=False)
    assert list(cache.iterdir()) == []


def test_download_of_a_missing_file_fails_clearly_and_leaves_nothing(tmp_path, serve):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="could not download train-labels-idx1-ubyte.*404"):
        download_mnist(cache, ["train-labels-idx1-ubyte"], base_url=serve(tmp_path), verbose=False)
    assert list(cache.iterdir()) == []


def test_download_refuses_an_unofficial_name(tmp_path):
    with pytest.raises(ValueError, match="official MNIST file names"):
        download_mnist(tmp_path, ["mnist.pkl"])


# -- digits ------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_disjoint():
    if importlib.util.find_spec("sklearn") is None:  # (importing sklearn itself takes seconds)
        pytest.skip("the digits data set comes with scikit-learn, which is not installed")
    a, b = load_digits_dataset(), load_digits_dataset()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_test.shape == (359, 1, 8, 8)
    assert a.x_train.max() == 1.0 and a.x_train.min() == 0.0
    assert np.all(np.bincount(a.t_test, minlength=10) >= 35)
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    assert (
        sum(r.tobytes() in train_rows for r in a.x_test.reshape(len(a.x_test), -1)) < 5
    )  # a few exact duplicates


def test_default_cache_and_mirror_come_from_the_environment(tmp_path, serve, monkeypatch):
    url = serve(tmp_path / "mirror")
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FASTCONV_MNIST_URL", url)
    with pytest.raises(DownloadError, match=f"{url}train-images-idx3-ubyte.gz"):
        load_mnist()
    assert list((tmp_path / "data" / "mnist").iterdir()) == []
