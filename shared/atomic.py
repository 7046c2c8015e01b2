"""Atomic file writes: a crash or a full disk never leaves a half-written output.

Each write goes to a temporary file in the same folder, is flushed to disk, and is renamed
over the target (`os.replace`, atomic on POSIX). Readers see the old file or the new one.
A write that fails (no space, read-only, permission) raises `WriteError`: an `OSError` with
the errno of the failure and the target as its filename, whatever step of the write failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


class WriteError(OSError):
    """A write of `filename` that failed; `errno`/`strerror` say why (shared/storage.py)."""


def _as_write_error(err: OSError, path: Path) -> WriteError:
    if isinstance(err, WriteError) and err.filename == str(path):
        return err
    return WriteError(err.errno, err.strerror or str(err), str(path))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _as_write_error(err, path) from err
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_line_atomic(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) as a whole or not at all: a single `write` to a
    file opened for appending, flushed to disk; a short or failed write is cut off again, so a
    reader never sees half a line (a crash mid-write can leave one: `read_lines` skips it)."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise _as_write_error(err, path) from err
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # a full disk can take part of it: the next write says why not
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise _as_write_error(err, path) from err
    finally:
        os.close(fd)


def read_lines(path: str | Path) -> list[str]:
    """The complete lines of a file `append_line_atomic` writes (an unfinished last one, left
    by a crash, is not a line)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [ln for ln in lines[:-1] if ln.strip()]  # lines[-1]: "" or an unfinished line


def write_folder_atomic(path: str | Path, files: dict[str, bytes]) -> Path:
    """A folder of files, replaced as a whole: written beside, then swapped in by renames."""

    path = Path(path)
    tmp = old = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        for name, data in files.items():
            write_bytes_atomic(tmp / name, data)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():  # the old folder stays
            os.replace(old, path)
        if isinstance(err, OSError):
            raise _as_write_error(err, path) from err
        raise
    return path
