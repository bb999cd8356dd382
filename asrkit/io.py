"""Writing a file safely: the one way asrkit replaces a file, so that a kill never leaves half of one.

Every writer puts its bytes in a temporary file beside the target (same folder, so same file system),
flushes and fsyncs it, `os.replace`s it onto the target (atomic on POSIX and Windows), then fsyncs the
folder where the platform allows, so the rename itself survives a power cut. On any error the temporary
file is removed and the old target, if there was one, is left exactly as it was. Readers see the old
file or the new one, never a mixture.

- `atomic_write(path, data)`: a whole str or bytes at once.
- `atomic_open(path, mode)`: a file object for streamed writes (`torch.save(obj, f)`, a line at a time).
- `atomic_path(path)`: a temporary *name* for writers that take a file name (soundfile, KenLM's tools).

A temporary file is named `.{name}.{pid}-{random}.tmp` (hidden, unique per process and call), so a folder
holds no temporary file after a run unless the run was killed mid-write.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

TMP_SUFFIX = ".tmp"


def temp_path(path: str | Path, suffix: str = TMP_SUFFIX) -> Path:
    """A fresh name beside `path` for its temporary file: `.{name}.{pid}-{random}{suffix}`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}{suffix}")


def atomic_write(path: str | Path, data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Replace `path` with `data` (text is encoded with `encoding`, newlines as `open` writes them); returns it.
    The folder must exist."""
    if isinstance(data, bytes):
        with atomic_open(path, "wb") as fb:
            fb.write(data)
    else:
        with atomic_open(path, "w", encoding=encoding) as ft:
            ft.write(data)
    return Path(path)


@overload
def atomic_open(path: str | Path, mode: Literal["w"] = "w", *, encoding: str = "utf-8",
                newline: str | None = None) -> AbstractContextManager[TextIO]: ...


@overload
def atomic_open(path: str | Path, mode: Literal["wb"], *, encoding: str = "utf-8",
                newline: str | None = None) -> AbstractContextManager[BinaryIO]: ...


def atomic_open(path: str | Path, mode: str = "w", *, encoding: str = "utf-8",
                newline: str | None = None) -> AbstractContextManager[IO[Any]]:
    """`with atomic_open(path, "w" | "wb") as f:` a new temporary file beside `path`; when the block ends
    without an error it is flushed, fsynced and renamed onto `path`, else removed (`path` is left as it was).
    `encoding` and `newline` apply to text mode only."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode {mode!r}: use 'w' (text) or 'wb' (binary)")
    return _atomic_open(Path(path), mode, encoding, newline)


@contextmanager
def _atomic_open(path: Path, mode: str, encoding: str, newline: str | None) -> Iterator[IO[Any]]:
    tmp = temp_path(path)
    # O_EXCL: never write through a file someone else made; 0o666 less the umask: the mode `open` would give
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        binary = mode == "wb"
        with open(fd, mode, encoding=None if binary else encoding, newline=None if binary else newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # an error, or a kill-free success (then it is already gone)


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """`with atomic_path(path) as tmp:` a temporary name beside `path` (not created) for a writer that takes a
    file name; when the block ends without an error the file written there is fsynced and renamed onto `path`,
    else removed. `suffix` ends the name, for writers that pick the format from it (e.g. ".partial.wav")."""
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: the writer made no file to put in place of {path}")
        fsync_file(tmp)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where a folder cannot be opened or synced (Windows, some
    network file systems): the rename is still atomic there, only not yet on disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
