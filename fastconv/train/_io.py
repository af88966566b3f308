"""Files the training stack writes and reads: atomic writes, stale temporaries, safe ``.npz`` loads.

Writes go to a temporary file beside the target, named ``.<name>.<pid>.<random>.tmp``, which is then
renamed over the target: a reader sees the old file or the new one, never half of one. The temporary is
created with mode 0666 so the umask applies, as to any program's output (``tempfile.mkstemp`` would make
every output 0600, unreadable to the people a model or a plot is meant for). A writer killed mid-write
(SIGKILL, power loss) leaves its temporary behind; the writer's pid in the name lets
:func:`remove_stale_temporaries` tell such leftovers from files another live process is writing.

Loads never unpickle, and any damage to a file is reported as one ValueError naming the file, whatever
the zip and npy readers raised. Every member is read whole, so the zip's CRC is always checked: a flipped
bit in an array's ``.npy`` header could otherwise describe a smaller array, whose reading would stop before
the CRC is compared and return wrong values without an error.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastconv._arrays import to_host

# What reading a damaged zip or .npy member can raise: zipfile's own errors, KeyError (a name in the
# directory without its entry), NotImplementedError (a flipped compression method or flag), RuntimeError
# (a flipped "encrypted" flag), struct.error and EOFError (cut headers), zlib.error, UnicodeDecodeError
# (names), ValueError, SyntaxError and tokenize.TokenError (npy headers), MemoryError and OverflowError
# (a header promising an absurd shape), OSError (seeks past the end).
DAMAGED_FILE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    KeyError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    EOFError,
    zlib.error,
    UnicodeDecodeError,
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    MemoryError,
    OverflowError,
    OSError,
)

_END_RECORD_SIZE = 22  # a zip's end-of-central-directory record, without its comment
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.(?P<kind>tmp|part)$")


def one_line(exc: BaseException | str) -> str:
    """An exception's message (or a string) with its whitespace runs, newlines included, as single spaces."""
    return " ".join(str(exc).split())


def create_temporary(path: str | os.PathLike[str], kind: str = "tmp") -> tuple[int, Path]:
    """Create and open ``.<name>.<pid>.<random>.<kind>`` beside ``path`` for writing: (fd, its path).

    Mode 0666 before the umask, as ``open()`` would give; ``O_EXCL`` so it is never someone else's file.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unique temporary file name found", str(path))  # pragma: no cover


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a new temporary file beside ``path``, flush it to disk, then rename it to
    ``path`` (``os.replace``): readers see the old file or the new one, never a partial one. The temporary
    is removed if ``write`` fails; the new file's mode follows the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def _process_is_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; else no way to tell: keep its file
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str], names: Collection[str]) -> list[Path]:
    """Delete the temporaries of :func:`create_temporary` for the files ``names`` in ``directory`` whose
    writing process no longer exists (killed mid-write). Returns the paths removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m is None or m["name"] not in names or _process_is_alive(int(m["pid"])):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:  # its writer, or another run, removed it meanwhile
            continue
        removed.append(entry)
    return removed


def save_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (name -> array, NumPy or CuPy; no object arrays) to ``path`` as ``.npz``, atomically."""
    host_arrays = {}
    for k, v in arrays.items():
        a = to_host(v)
        if a.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; parameter files hold numeric arrays only")
        host_arrays[k] = a
    return atomic_write(path, lambda f: np.savez(f, **host_arrays))


def load_npz(path: str | os.PathLike[str], what: str = "parameter file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, loaded with ``allow_pickle=False``.

    Raises FileNotFoundError when it does not exist, and a one-line ValueError naming the file for a
    pickle, an object array, or a file that is not an intact ``.npz`` (truncated, bit-flipped, other).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head[:1] == b"\x80":
            raise ValueError(
                f"{path} is a pickle; a {what} must be an .npz written by fastconv (pickles are refused: "
                "loading one can run arbitrary code)"
            )
        if head == b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt {what} (truncated: the zip directory at its end is missing)")
        raise ValueError(f"{path} is not an .npz archive; a {what} must be an .npz written by fastconv")
    try:
        return _read_npz(path)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{path}: refused ({one_line(exc)}); a {what} holds numeric arrays only, never pickled objects"
            ) from exc
        raise ValueError(f"{path}: corrupt {what} ({type(exc).__name__}: {one_line(exc)})") from exc
    except DAMAGED_FILE_ERRORS as exc:
        raise ValueError(f"{path}: corrupt {what} ({type(exc).__name__}: {one_line(exc)})") from exc


def _end_record_entries(path: Path) -> int | None:
    """The member count in the zip's end-of-central-directory record (None when it defers to zip64)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _END_RECORD_SIZE - 0xFFFF))  # the record, then a comment of up to 64 KiB
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END_RECORD_SIZE:
        raise zipfile.BadZipFile("no end-of-central-directory record")
    total = int.from_bytes(tail[at + 10 : at + 12], "little")
    return None if total == 0xFFFF else total


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npy`` members of an ``.npz``, each member read whole (its CRC checked) and
    required to hold one array and nothing after it. The directory must list as many members as the end
    record counts: a flipped length in a directory entry hides the entries after it from ``zipfile``."""
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        listed, counted = len(zf.infolist()), _end_record_entries(path)
        if counted is not None and listed != counted:
            raise ValueError(f"its zip directory lists {listed} members, its end record counts {counted}")
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an .npy array")
            data = zf.read(info)
            buf = io.BytesIO(data)
            arrays[info.filename[: -len(".npy")]] = np.lib.format.read_array(buf, allow_pickle=False)
            if buf.tell() != len(data):
                raise ValueError(
                    f"member {info.filename!r} holds {len(data) - buf.tell()} bytes after its array"
                )
    return arrays


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
