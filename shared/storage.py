"""Storage faults: a write that fails (no space, a quota, read-only, permission, a file-size
limit) ends a command in one line that names the path, the error and what is safe.

Every entry point (`art-train`, `art-eval`, `art-compare`, `art-bench`, `art-submit`) turns such
an `OSError` into `<prog>: stopped: cannot write <path> (<error>); <what is safe>` and exit
status 1, never a traceback. `room_problem` is the start-up check of free space.
"""

from __future__ import annotations

import errno
import functools
import shutil
import sys
from pathlib import Path

from shared.errors import RunStoppedError

# The errors of a storage that cannot take a write (not bugs: the disk, not the code).
STORAGE_ERRNOS = {
    errno.ENOSPC,  # no space left on device
    errno.EDQUOT,  # disk quota exceeded
    errno.EROFS,  # read-only file system
    errno.EACCES,  # permission denied
    errno.EPERM,  # operation not permitted
    errno.EFBIG,  # file too large (a file-size limit, `ulimit -f`)
    errno.EIO,  # the device failed
}
# Written by every entry point's storage message when no more precise advice is given.
ATOMIC_NOTE = "every file written before it is complete (each is written atomically)"


def storage_error(err: BaseException | None) -> OSError | None:
    """The storage `OSError` behind `err` (itself, or in its cause/context chain), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def describe(err: OSError, where: str | None = None) -> str:
    """`cannot write <path> ([Errno 28] No space left on device)`."""
    reason = f"[Errno {err.errno}] {err.strerror or errno.errorcode.get(err.errno, '')}"
    path = err.filename or where or "a file"
    return f"cannot write {path} ({reason})"


def free_bytes(folder: str | Path) -> int:
    """Free bytes for an unprivileged writer in `folder` (or its nearest existing parent)."""
    probe = Path(folder).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def room_problem(folder: str | Path, need: int, what: str) -> str | None:
    """Why `folder` cannot take `need` bytes (`what` says what they are), or None."""
    free = free_bytes(folder)
    if free >= need:
        return None
    return (
        f"the output folder {folder} has {mib(free)} free and {what} needs {mib(need)}; free "
        "space there or set output_dir to a folder on a larger disk"
    )


def exits_on_storage_errors(prog: str, safe: str = ATOMIC_NOTE, where=None):
    """Decorate a console script's `main() -> int`: a storage fault (or a `RunStoppedError`)
    ends it with one line on stderr and status 1. `safe` says what is kept; `where()` names
    the place when the error does not carry a path (a failed `write` does not)."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except RunStoppedError as err:
                message = str(err)
            except OSError as err:
                fault = storage_error(err)
                if fault is None:
                    raise
                message = f"{describe(fault, where() if where else None)}; {safe}"
            print(f"{prog}: stopped: {message}", file=sys.stderr)
            return 1

        return run

    return wrap
