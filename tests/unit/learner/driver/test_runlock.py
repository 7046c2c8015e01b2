"""One driver per run folder (learner/driver/runlock.py), with real processes and files: a
live holder refuses, a dead or silent one is taken over, and of many drivers started in the
same instant exactly one gets the folder."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learner.driver.runlock import LOCK_NAME, Holder, LockLost, RunFolderBusy, RunLock

REPO = Path(__file__).resolve().parents[4]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run: Path, **fields) -> Path:
    record = json.loads(Holder.me("someone-else").record())
    record.update(fields)
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def test_the_holder_is_named_and_a_second_driver_is_refused(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"] > 0
        with pytest.raises(RunFolderBusy) as refused:
            RunLock(run).acquire()
        message = str(refused.value)
        assert f"run folder {run} is in use by another driver" in message
        assert f"pid {os.getpid()}" in message and "\n" not in message
        assert lock.lost is None
    assert not (run / LOCK_NAME).exists()  # released
    RunLock(run).acquire().release()  # and free again


def test_a_lock_whose_process_is_gone_is_taken_over_and_logged(tmp_path, caplog):
    run = tmp_path / "run"
    _write_lock(run, pid=_dead_pid())
    with RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "took over the lock of a driver that is gone" in caplog.text
    assert "is gone" in caplog.text


def test_another_hosts_lock_is_taken_over_only_when_not_renewed(tmp_path, caplog):
    run = tmp_path / "run"
    path = _write_lock(run, host="node-7", boot_id="another-boot", pid=1)
    with pytest.raises(RunFolderBusy, match="host node-7, pid 1"):
        RunLock(run, stale_s=60).acquire()
    old = time.time() - 61
    os.utime(path, (old, old))
    with RunLock(run, stale_s=60):
        pass
    assert "not renewed for 61s (lock_stale_s=60)" in caplog.text


def test_the_holder_renews_and_notices_when_its_lock_is_taken(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run, renew_s=0.05).acquire()
    try:
        path = run / LOCK_NAME
        os.utime(path, (time.time() - 100, time.time() - 100))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5  # renewed
        lock.check()
        _write_lock(run, pid=os.getpid())  # another driver's record in its place
        time.sleep(0.3)
        with pytest.raises(LockLost, match="another driver took its lock over"):
            lock.check()
    finally:
        lock.release()
    assert (run / LOCK_NAME).exists()  # not ours: left alone


RACER = """
import sys, time
from pathlib import Path
from learner.driver.runlock import RunFolderBusy, RunLock
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    lock = RunLock(Path(sys.argv[1])).acquire()
    print("got", flush=True)
    time.sleep(1.5)
    lock.release()
except RunFolderBusy:
    print("refused", flush=True)
"""


@pytest.mark.parametrize("stale_lock", [False, True], ids=["free", "stale"])
def test_of_drivers_started_in_the_same_instant_exactly_one_gets_the_folder(tmp_path, stale_lock):
    run = tmp_path / "run"
    if stale_lock:  # all of them judge it stale at once: still only one takes it
        _write_lock(run, pid=_dead_pid())
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(run), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert answers == ["got"] + ["refused"] * 5
    assert not (run / LOCK_NAME).exists()
