"""Atomic writes and safe loads of ``.npz`` parameter files (never pickles)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def host(a: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, flush it to disk, then rename it
    to ``path`` (``os.replace``): readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (name -> array, NumPy or CuPy; no object arrays) to ``path`` as ``.npz``, atomically."""
    host_arrays = {}
    for k, v in arrays.items():
        a = host(v)
        if a.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; parameter files hold numeric arrays only")
        host_arrays[k] = a
    return atomic_write(path, lambda f: np.savez(f, **host_arrays))


def load_npz(path: str | os.PathLike[str], what: str = "parameter file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, loaded with ``allow_pickle=False``.

    Raises ValueError (naming the file) for a pickle, an object array, or anything that is not an npz.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        kind = "a pickle" if head[:1] == b"\x80" else "not an .npz archive"
        raise ValueError(
            f"{path} is {kind}; a {what} must be an .npz written by fastconv (pickles are refused: "
            "loading one can run arbitrary code)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        raise ValueError(
            f"{path}: refused ({exc}); a {what} holds numeric arrays only, never pickled objects"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: corrupt {what} ({exc})") from exc


def check_arrays(
    path: Any,
    loaded: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    what: str = "parameter file",
) -> None:
    """Raise ValueError unless ``loaded`` has exactly the names of ``expected`` with those shapes."""
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path}: the {what} does not match this model: missing {missing or 'nothing'}, "
            f"unexpected {extra or 'nothing'} (the model has {sorted(expected)})"
        )
    for k, shape in expected.items():
        a = loaded[k]
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{path}: {k!r} has shape {tuple(a.shape)}, the model needs {tuple(shape)}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{path}: {k!r} has dtype {a.dtype}, the model needs floating-point values")
