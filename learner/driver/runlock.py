"""One driver per run folder: `<run>/driver.lock` names its holder.

A scheduler that restarts a job it believes dead, or a user who runs the same command twice,
must not get two drivers writing one run folder. The driver takes the lock before it reads a
checkpoint or writes a file, holds it to the end and removes it on the way out:

- taking it is one atomic step: the holder's record (host, pid, start time) is written to a
  file of its own and hard-linked to `driver.lock`, which fails when the name exists (on a
  file system without hard links: `O_CREAT | O_EXCL`), so of two drivers started in the same
  instant exactly one gets it;
- a held lock refuses the second driver at start-up in one line that names the holder;
- the holder renews it (its modification time) every `lock_stale_s / 4` seconds from a daemon
  thread;
- a lock is stale, and taken over with a warning in the log, when its process is gone (the
  same machine: same boot and pid namespace, the pid is not running or is another process) or
  when it was not renewed for `lock_stale_s` (a holder on another machine, as on a shared file
  system). Taking over moves the stale file aside first (a rename: only one of several takers
  succeeds) and checks that it moved the stale holder's file, not a fresh one;
- a driver whose lock was taken over (it stalled for longer than `lock_stale_s`) finds out when
  it renews and stops at the next step boundary without writing more.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.errors import RunStoppedError, UserError

logger = logging.getLogger("art.lock")
LOCK_NAME = "driver.lock"
# A lock file that cannot be parsed is being written (O_EXCL fallback) while younger than this.
UNREADABLE_GRACE_S = 30.0


class RunFolderBusy(UserError):
    """Another live driver holds the run folder; the message names it."""


class LockLost(RunStoppedError):
    """This driver's lock was taken over: it must not write the run folder any more."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _boot_id() -> str | None:
    return (_read(Path("/proc/sys/kernel/random/boot_id")) or "").strip() or None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    pid it names a process uniquely, so a reused pid is not taken for the holder."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """What a lock file says about its holder (`renewed`: the file's modification time)."""

    host: str
    pid: int
    started: float
    token: str
    boot_id: str | None = None
    pid_ns: str | None = None
    pid_start: str | None = None
    command: str = ""
    renewed: float = 0.0

    @classmethod
    def me(cls, token: str) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.time(),
            token=token,
            boot_id=_boot_id(),
            pid_ns=_pid_ns(),
            pid_start=_process_start(os.getpid()),
            command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        )

    def record(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "renewed"}
        return json.dumps(fields, indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder in `path`; None when there is no such file; a Holder with token "" for
        a file that cannot be parsed."""
        try:
            renewed = path.stat().st_mtime
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text, renewed = "", time.time()
        try:
            data = json.loads(text)
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            return cls(**{**known, "renewed": renewed})
        except (ValueError, TypeError):
            return cls(host="?", pid=-1, started=renewed, token="", renewed=renewed)

    def shares_pids_with_me(self) -> bool:
        """Whether this holder's pid can be checked here: the same machine since its boot and
        the same pid namespace (a container on the same host with another one cannot)."""
        if self.boot_id and _boot_id():
            return self.boot_id == _boot_id() and self.pid_ns == _pid_ns()
        return self.host == socket.gethostname()

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        started = datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"host {self.host}, pid {self.pid}, started {started}, last renewed "
            f"{max(now - self.renewed, 0):.0f}s ago"
        )


def why_stale(holder: Holder, stale_s: float, now: float | None = None) -> str | None:
    """Why the lock of `holder` may be taken over, or None while its holder is alive."""
    now = time.time() if now is None else now
    age = now - holder.renewed
    if not holder.token:
        return f"it cannot be read for {age:.0f}s" if age > UNREADABLE_GRACE_S else None
    if holder.shares_pids_with_me():
        if not _alive(holder.pid):
            return f"its process {holder.pid} on {holder.host} is gone"
        start = _process_start(holder.pid)
        if holder.pid_start and start and start != holder.pid_start:
            return f"pid {holder.pid} on {holder.host} is now another process"
        return None
    if age > stale_s:
        return f"it was not renewed for {age:.0f}s (lock_stale_s={stale_s:g})"
    return None


def live_holder(run_dir: str | Path, stale_s: float) -> Holder | None:
    """The live holder of the run folder's lock, or None (no lock, or a stale one)."""
    holder = Holder.read(Path(run_dir) / LOCK_NAME)
    if holder is None or why_stale(holder, stale_s) is not None:
        return None
    return holder


def busy_message(run_dir: Path, holder: Holder, stale_s: float) -> str:
    return (
        f"run folder {run_dir} is in use by another driver ({holder.describe()}; "
        f"{run_dir / LOCK_NAME}); wait for it to end or stop it, or start another run (another "
        f"run_name, or leave resume unset). A lock not renewed for {stale_s:g}s "
        "(lock_stale_s) is taken over"
    )


class RunLock:
    """The lock of one run folder, held by this driver from `acquire` to `release`."""

    def __init__(self, run_dir: str | Path, stale_s: float = 120.0, renew_s: float | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_s = float(stale_s)
        self.renew_s = renew_s if renew_s is not None else max(min(self.stale_s / 4, 30.0), 0.05)
        self.token = secrets.token_hex(8)
        self.created_dir = False
        self.lost: str | None = None  # why the lock is not ours any more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunFolderBusy`; then renew it in the background."""
        self.created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = Holder.me(self.token)
        mine = self.run_dir / f".{LOCK_NAME}.{self.token}"
        try:
            mine.write_text(me.record())
            for _ in range(8):
                if self._link(mine):
                    break
                holder = Holder.read(self.path)
                if holder is None:  # released in between: try again
                    continue
                reason = why_stale(holder, self.stale_s)
                if reason is None:
                    raise RunFolderBusy(busy_message(self.run_dir, holder, self.stale_s))
                if self._move_aside(holder):
                    logger.warning(
                        "run folder %s: took over the lock of a driver that is gone (%s; %s)",
                        self.run_dir,
                        holder.describe(),
                        reason,
                    )
            else:
                raise RunFolderBusy(
                    f"run folder {self.run_dir}: could not take {self.path} (other drivers took "
                    "and released it repeatedly); try again"
                )
        finally:
            mine.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._renew, name="art-run-lock", daemon=True)
        self._thread.start()
        return self

    def _link(self, mine: Path) -> bool:
        """Create `driver.lock` with our record in one step; False if it exists."""
        try:
            os.link(mine, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
        try:  # no hard links here: exclusive create (readers give it UNREADABLE_GRACE_S)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(mine.read_text())
        return True

    def _move_aside(self, stale: Holder) -> bool:
        """Remove the stale lock of `stale`; False when another taker was first (then the
        loop looks again)."""
        aside = self.run_dir / f".{LOCK_NAME}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = Holder.read(aside)
        if moved is not None and moved.token != stale.token:  # a fresh lock: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            holder = Holder.read(self.path)
            if holder is None or holder.token != self.token:
                self.lost = (
                    f"its lock {self.path} was removed"
                    if holder is None
                    else f"another driver took its lock over ({holder.describe()})"
                )
                logger.error("run folder %s: %s; this driver stops", self.run_dir, self.lost)
                return
            try:
                os.utime(self.path)
            except OSError as err:
                logger.warning("could not renew %s (%s); will try again", self.path, err)

    def check(self) -> None:
        """Raise `LockLost` once the lock is not ours any more (at a step boundary)."""
        if self.lost:
            raise LockLost(
                f"this driver no longer holds run folder {self.run_dir}: {self.lost} (it stalled "
                f"for more than lock_stale_s={self.stale_s:g}s?); it stopped without writing more"
            )

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = Holder.read(self.path)
        if holder is not None and holder.token == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
