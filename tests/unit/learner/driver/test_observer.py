"""MLflow as an observer (learner/driver/observer.py): a store that is locked by another
process (a real SQLite transaction) or unreachable never makes a step wait; metrics.jsonl has
everything; what MLflow did not take is counted."""

import subprocess
import sys
import time

import pytest

from learner.driver.cli import compose_config
from learner.driver.observer import Tracker, read_metrics

HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")  # no one reads or writes the store until this ends
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""


@pytest.fixture
def locked_store(tmp_path):
    """A SQLite file another process holds an exclusive transaction on; write a line to
    `.stdin` to release it."""
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == b"locked"
    yield db, holder
    holder.kill()
    holder.wait()


def _cfg(tmp_path, uri: str, *overrides):
    return compose_config(
        f"logging.tracking_uri={uri}", f"logging.artifact_location={tmp_path}/art", *overrides
    )


def test_a_locked_store_never_makes_a_step_wait_and_gets_everything_after(tmp_path, locked_store):
    db, holder = locked_store
    run = tmp_path / "run"
    run.mkdir()
    tracker = Tracker(_cfg(tmp_path, f"sqlite:///{db}"), run, "locked", params={"lr": "0.05"})
    started = time.perf_counter()
    for step in (1, 2, 3):
        tracker.log_metrics({"reward_mean": step / 10, "loss": float("nan")}, step=step)
    assert time.perf_counter() - started < 1.0  # the store is locked: the steps did not wait
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert read_metrics(run)[0]["loss"] is None  # NaN as null: strict JSON
    assert tracker.flush(0.5)["unsent_values"] == 6 and tracker.run_id is None

    holder.stdin.write(b"go\n")
    holder.stdin.flush()
    report = tracker.end_run(wait_s=60)
    assert report["unsent_values"] == 0 and report["unsent_calls"] == 0, report
    assert report["sent_values"] == 6
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    history = client.get_metric_history(tracker.run_id, "reward_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    finished = client.get_run(tracker.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params["lr"] == "0.05"
    assert finished.data.tags["art.run_folder"] == str(run)


def test_an_unreachable_store_leaves_the_metrics_in_the_file_and_says_so(tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a folder")
    run = tmp_path / "run"
    run.mkdir()
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # its folder cannot be made
    tracker = Tracker(_cfg(tmp_path, uri, "logging.tracking_wait_s=1"), run, "unreachable")
    started = time.perf_counter()
    for step in range(1, 6):
        tracker.log_metrics({"reward_mean": 0.5}, step=step)
    assert time.perf_counter() - started < 1.0
    report = tracker.end_run()
    assert report["unsent_values"] == 5 and report["mlflow_run_id"] is None
    assert report["retries"] >= 1 and report["last_error"]
    assert len(read_metrics(run)) == 5
    assert "did not take 5 metric values" in caplog.text and "metrics.jsonl" in caplog.text


def test_a_resumed_run_drops_the_lines_of_steps_it_repeats(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "reward_mean": 0.1}}\n' for s in range(1, 7)) + '{"step": 7, "r'
    )
    tracker = Tracker(_cfg(tmp_path, f"sqlite:///{tmp_path}/m.db"), run, "r", resume_step=4)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    tracker.log_metrics({"reward_mean": 0.2}, step=5)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    tracker.end_run(wait_s=30)
