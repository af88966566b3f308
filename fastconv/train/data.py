"""Data sets: MNIST from its original IDX files, and scikit-learn's bundled ``digits``.

MNIST (``load_mnist``) reads the four official files, gzipped or not, from a directory, checks
their IDX magic numbers, sizes and the md5 checksums of the official (decompressed) files, and fails
with a message naming the file on a truncated or corrupt one. Missing files can be downloaded into a
cache directory from a configurable mirror; a download is written to a temporary file in the target
directory, verified, then renamed, so no partial or unverified file is ever used (the temporary of a
download killed midway is removed by the next download into that directory).

A directory that holds only the 10,000-image test set (``t10k-*``) gives a train/test split of its
first 8,000 and last 2,000 images, and says so.

``digits`` (``load_digits_dataset``): the 1,797 real 8x8 digits bundled with scikit-learn, with a
fixed stratified 80/20 split: it works offline with nothing to download.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import struct
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastconv.train._io import create_temporary, one_line, remove_stale_temporaries

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "Dataset",
    "DownloadError",
    "default_cache_dir",
    "download_mnist",
    "load_dataset",
    "load_digits_dataset",
    "load_mnist",
    "load_mnist_dataset",
    "read_idx",
    "to_categorical",
]

# name -> (IDX magic, number of items, md5 of the decompressed official file)
MNIST_FILES: dict[str, tuple[int, int, str]] = {
    "train-images-idx3-ubyte": (2051, 60000, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, 60000, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, 10000, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, 10000, "27ae3e4e09519cfbb04c329615203637"),
}
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Public mirrors of the original files (yann.lecun.com no longer serves them reliably).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRROR_ENV = "FASTCONV_MNIST_URL"
CACHE_ENV = "FASTCONV_DATA"
TEST_ONLY_SPLIT = 8000  # t10k only: train on images [0, 8000), evaluate on [8000, 10000)


class DownloadError(OSError):
    """A file could not be downloaded or failed verification; nothing was written."""


def to_categorical(y: Any, num_classes: int | None = None, dtype: Any = "float32") -> np.ndarray:
    """One-hot encode integer class labels, as ``keras.utils.to_categorical``.

    y: (N,) integers in [0, num_classes) (any shape; a trailing axis of 1 is dropped)
    -> (N, num_classes); ``num_classes`` defaults to ``max(y) + 1``.
    """
    arr = np.asarray(y)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (
            not np.issubdtype(arr.dtype, np.floating)
            or not np.all(np.isfinite(arr))
            or np.any(arr != np.round(arr))
        ):
            raise ValueError(f"y must hold integer class labels, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    if arr.ndim > 1 and arr.shape[-1] == 1:
        arr = arr.reshape(arr.shape[:-1])
    if arr.size and arr.min() < 0:
        raise ValueError(f"y must hold non-negative class labels, got minimum {arr.min()}")
    if num_classes is None:
        num_classes = int(arr.max()) + 1 if arr.size else 0
    elif arr.size and arr.max() >= num_classes:
        raise ValueError(
            f"y holds label {arr.max()}, which needs num_classes > {arr.max()}; got {num_classes}"
        )
    flat = arr.reshape(-1)
    out = np.zeros((flat.size, int(num_classes)), dtype=dtype)
    out[np.arange(flat.size), flat] = 1
    return out.reshape(*arr.shape, int(num_classes))


# ------------------------------------------------------------------------------------------------
# IDX files
def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        # gzip.BadGzipFile (a bad CRC, length or header) is an OSError
        except (EOFError, OSError, zlib.error, struct.error, ValueError) as exc:
            raise ValueError(
                f"{path}: corrupt or truncated gzip data ({one_line(exc)}); delete it and download it again"
            ) from exc
    return raw


def read_idx(path: str | os.PathLike[str], *, verify: bool = True) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST's format), gzipped or not -> uint8 array.

    For the official MNIST file names (with or without ``.gz``) the magic number, item count,
    image size and label range are checked, and with ``verify`` the md5 of the decompressed bytes.
    Raises ValueError naming the file when it is truncated, corrupt or not what its name says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    base = path.name[:-3] if path.name.endswith(".gz") else path.name
    official = MNIST_FILES.get(base)
    if official is not None and magic != official[0]:
        raise ValueError(
            f"{path}: bad magic number {magic} (0x{magic:08x}); an IDX {'label' if official[0] == 2049 else 'image'} "
            f"file starts with {official[0]} (0x{official[0]:08x})"
        )
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(
            f"{path}: bad magic number {magic} (0x{magic:08x}); expected an IDX file of unsigned bytes"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, the IDX header alone needs {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise ValueError(
            f"{path}: {what}: the header promises shape {dims} ({expected} bytes), the file holds {len(data)} bytes"
        )
    if official is not None:
        want = (official[1], 28, 28) if official[0] == 2051 else (official[1],)
        if dims != want:
            raise ValueError(f"{path}: holds shape {dims}; the official {base} has shape {want}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if official is not None and official[0] == 2049 and arr.max() > 9:
        raise ValueError(f"{path}: corrupt: label {arr.max()} outside 0..9")
    if official is not None and verify:
        digest = hashlib.md5(data).hexdigest()
        if digest != official[2]:
            raise ValueError(
                f"{path}: checksum mismatch: md5 of the decompressed data is {digest}, the official {base} has "
                f"{official[2]}; the file is corrupt or not the official one (pass verify=False to use it anyway)"
            )
    return arr.copy()  # writable, owns its memory


def _find(directory: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def default_cache_dir() -> Path:
    """``$FASTCONV_DATA/mnist``, else ``$XDG_CACHE_HOME/fastconv/mnist``, else ``~/.cache/fastconv/mnist``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "mnist"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "fastconv" / "mnist"


def _mirrors(base_url: str | Sequence[str] | None) -> list[str]:
    if base_url is None:
        base_url = os.environ.get(MIRROR_ENV) or MNIST_MIRRORS
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    return [u if u.endswith("/") else u + "/" for u in urls]


def download_mnist(
    directory: str | os.PathLike[str] | None = None,
    names: Sequence[str] | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    timeout: float = 60.0,
    verbose: bool = True,
) -> list[Path]:
    """Download the missing official MNIST files (``<name>.gz``) into ``directory``.

    ``base_url``: a mirror URL or a list of them, tried in order (default ``$FASTCONV_MNIST_URL``, else
    :data:`MNIST_MIRRORS`). Each file is written to a temporary file in ``directory``, verified
    (IDX structure and md5 of the decompressed bytes), then renamed into place; on any failure the
    temporary file is removed and DownloadError says what happened at each mirror.
    Returns the paths of the files now present.
    """
    directory = Path(directory) if directory is not None else default_cache_dir()
    names = list(MNIST_FILES) if names is None else list(names)
    unknown = [n for n in names if n not in MNIST_FILES]
    if unknown:
        raise ValueError(f"names must be official MNIST file names {list(MNIST_FILES)}, got {unknown}")
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory, [name + ".gz" for name in MNIST_FILES])  # downloads killed midway
    out = []
    for name in names:
        existing = _find(directory, name)
        if existing is not None:
            out.append(existing)
            continue
        target = directory / (name + ".gz")
        failures = []
        for mirror in _mirrors(base_url):
            url = mirror + name + ".gz"
            fd, tmp = create_temporary(target, "part")
            try:
                with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
                    if verbose:
                        print(f"downloading {url}", flush=True)
                    while chunk := resp.read(1 << 16):
                        f.write(chunk)
                _verify_download(tmp, name)
                os.replace(tmp, target)
                out.append(target)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {exc}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        else:
            raise DownloadError(
                f"could not download {name}: "
                + "; ".join(failures)
                + f". Nothing was written to {directory}."
            )
    return out


def _verify_download(tmp: Path, name: str) -> None:
    """Check a downloaded temporary file as the official ``name`` (magic, size, md5)."""
    data = _read_bytes(tmp)
    magic, count, md5 = MNIST_FILES[name]
    digest = hashlib.md5(data).hexdigest()
    if digest != md5:
        raise ValueError(f"checksum mismatch: md5 of the decompressed download is {digest}, {name} has {md5}")
    if int.from_bytes(data[:4], "big") != magic:  # pragma: no cover - implied by the md5
        raise ValueError(f"bad magic number in the download of {name}")


# ------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A train/test split. Images are (N, C, H, W) float32 (or flattened), labels (N,) int64 or one-hot."""

    name: str
    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    num_classes: int = 10
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, (C, H, W)."""
        return tuple(self.x_train.shape[1:])


def _prepare(
    images: np.ndarray,
    labels: np.ndarray,
    scale: float,
    normalize: bool,
    flatten: bool,
    one_hot_label: bool,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float32)
    if normalize:
        x /= np.float32(scale)
    x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *images.shape[1:])
    t = labels.astype(np.int64)
    if one_hot_label:
        t = to_categorical(t, num_classes)
    return x, t


def load_mnist_dataset(
    data_dir: str | os.PathLike[str] | None = None,
    normalize: bool = True,
    flatten: bool = False,
    one_hot_label: bool = False,
    *,
    download: bool | None = None,
    base_url: str | Sequence[str] | None = None,
    verify: bool = True,
) -> Dataset:
    """MNIST as a :class:`Dataset` (see :func:`load_mnist` for the rules). Default ``flatten=False``:
    images are (N, 1, 28, 28)."""
    directory = Path(data_dir) if data_dir is not None else default_cache_dir()
    if download is None:
        download = data_dir is None  # the cache fills itself; a directory you name is only read
    found = {name: _find(directory, name) for name in MNIST_FILES}
    missing = [n for n, p in found.items() if p is None]
    if missing and download:
        download_mnist(directory, missing, base_url=base_url)
        found = {name: _find(directory, name) for name in MNIST_FILES}
        missing = [n for n, p in found.items() if p is None]
    if not missing:
        parts = [read_idx(found[n], verify=verify) for n in (*TRAIN_FILES, *TEST_FILES)]
        x_train, t_train = _prepare(parts[0], parts[1], 255.0, normalize, flatten, one_hot_label, 10)
        x_test, t_test = _prepare(parts[2], parts[3], 255.0, normalize, flatten, one_hot_label, 10)
        note = f"MNIST from {directory}: 60,000 training and 10,000 test images"
        return Dataset("mnist", x_train, t_train, x_test, t_test, 10, note, {"split": "official"})
    if all(found[n] is not None for n in TEST_FILES):
        images = read_idx(found[TEST_FILES[0]], verify=verify)
        labels = read_idx(found[TEST_FILES[1]], verify=verify)
        x, t = _prepare(images, labels, 255.0, normalize, flatten, one_hot_label, 10)
        k = TEST_ONLY_SPLIT
        note = (
            f"MNIST: {directory} holds only the 10,000-image test set (t10k); training on its first "
            f"{k:,} images and evaluating on the last {len(x) - k:,}"
        )
        return Dataset("mnist", x[:k], t[:k], x[k:], t[k:], 10, note, {"split": "t10k-only"})
    hint = "pass download=True (CLI: --download)" if not download else ""
    raise FileNotFoundError(
        f"MNIST files missing in {directory}: {', '.join(missing)} (each may be gzipped, name + '.gz'). "
        f"Put the official files there, or {hint or 'check the download error above'}."
    )


def load_mnist(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
    base_url: str | Sequence[str] | None = None,
    verify: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The book's loader: ``(x_train, t_train), (x_test, t_test)``.

    normalize: pixels as float32 in [0, 1] (else float32 in [0, 255]);
    flatten: images (N, 784), else (N, 1, 28, 28); one_hot_label: labels (N, 10) float32, else (N,) int64.

    ``data_dir`` (default :func:`default_cache_dir`) is searched for the four official files, each raw
    or gzipped. Missing files are downloaded when ``download`` is true (default: only for the default
    cache directory). If only the t10k files are there, the split is their first 8,000 / last 2,000
    images, and a UserWarning says so.
    """
    ds = load_mnist_dataset(
        data_dir, normalize, flatten, one_hot_label, download=download, base_url=base_url, verify=verify
    )
    if ds.meta.get("split") == "t10k-only":
        warnings.warn(ds.note, UserWarning, stacklevel=2)
    return (ds.x_train, ds.t_train), (ds.x_test, ds.t_test)


# ------------------------------------------------------------------------------------------------
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) float64 in 0..16, labels (1797,) int64.

    Read straight from the data file scikit-learn ships (importing sklearn takes seconds), with
    ``sklearn.datasets.load_digits`` as the fallback.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the digits data set comes with scikit-learn: pip install scikit-learn (or 'fastconv[examples]')"
        )
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.images, dtype=np.float64), np.asarray(d.target, dtype=np.int64)


def load_digits_dataset(
    normalize: bool = True,
    flatten: bool = False,
    one_hot_label: bool = False,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits, split per class (stratified) with a fixed seed:
    1,438 training and 359 test images by default. Images (N, 1, 8, 8) float32 in [0, 1]."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    images, labels = _digits_arrays()
    rng = np.random.default_rng(split_seed)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = train[rng.permutation(len(train))]
    x_train, t_train = _prepare(images[train], labels[train], 16.0, normalize, flatten, one_hot_label, 10)
    x_test, t_test = _prepare(images[test], labels[test], 16.0, normalize, flatten, one_hot_label, 10)
    note = f"digits (scikit-learn, 8x8): {len(train):,} training and {len(test):,} test images, fixed split"
    return Dataset(
        "digits", x_train, t_train, x_test, t_test, 10, note, {"split": f"stratified seed {split_seed}"}
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    base_url: str | Sequence[str] | None = None,
) -> Dataset:
    """``digits`` or ``mnist``, images (N, 1, H, W) float32 in [0, 1], labels (N,) int64."""
    if name == "digits":
        return load_digits_dataset()
    if name == "mnist":
        return load_mnist_dataset(data_dir, download=download, base_url=base_url)
    raise ValueError(f"dataset must be 'digits' or 'mnist', got {name!r}")
