"""Nothing lost, part two: the faults of docs/reliability.md's fault table, with real processes,
files, filesystems and SQLite locks.

One scenario is shared by several checks (a module fixture): while another process holds an
exclusive transaction on the MLflow store, driver A (`art-train`, a process of its own) trains
and driver B (in this process) runs beside it on the same store; a second `art-train` on A's
folder is refused; A gets SIGTERM; its `last.pt` is then truncated and `resume=auto` resumes
it from the newest step file."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from learner.driver import train as driver
from learner.driver.observer import read_metrics
from learner.driver.runlock import LOCK_NAME, RunLock

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# Longer than MLflow's SQLite busy timeout (20 s) plus B's start: B's first MLflow calls fail
# ("database is locked") and are retried.
HOLD_S = 40.0
HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


def _common(tmp: Path) -> list[str]:
    return [
        f"output_dir={tmp / 'out'}",
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"logging.artifact_location={tmp}/artifacts",
        "eval.every=0",
        "algo.group_size=4",
        "logging.checkpoint_every=1",
    ]


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _mlflow_steps(tmp: Path, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return sorted(m.step for m in client.get_metric_history(run_id, "reward_mean"))


@pytest.fixture(scope="module")
def scenario(ray_local, tmp_path_factory):
    from learner.driver.cli import compose_config

    tmp = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    a_cmd = [str(BIN / "art-train"), *_common(tmp), "run_name=a", "steps=300", "resume=auto"]
    with open(tmp / "a.log", "w") as a_log:  # the child keeps its own copy of the file
        a = subprocess.Popen(a_cmd, stdout=a_log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    run_a = tmp / "out" / "a"
    _wait_for(lambda: "step 1/300" in (tmp / "a.log").read_text(), 300, "A's first step")

    # the same command again, while A runs
    second = subprocess.run(a_cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=180)

    # another process holds the store; B runs in this process beside A, on the same store
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp / "mlflow.db"), str(HOLD_S)], stdout=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == b"locked"
    cfg_b = compose_config(
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"logging.artifact_location={tmp}/artifacts",
        "eval.every=0",
        "algo.group_size=4",
        "steps=3",
        "logging.tracking_wait_s=60",
        run_dir=str(tmp / "out" / "b"),
    )
    summary_b = driver.train(cfg_b)
    holder.wait(timeout=60)

    # A's metrics reach MLflow once the store is free (its queue drains); then SIGTERM
    def a_run_id():
        lines = [ln for ln in (tmp / "a.log").read_text().splitlines() if "MLflow: run " in ln]
        return lines[0].split("MLflow: run ")[1].split()[0] if lines else None

    def a_caught_up():
        done = [
            ln for ln in (tmp / "a.log").read_text().splitlines() if " art.train INFO step " in ln
        ]
        return len(_mlflow_steps(tmp, run_id_a)) >= len(done) - 1 >= 2

    run_id_a = _wait_for(a_run_id, 120, "A's MLflow run")
    _wait_for(a_caught_up, 120, "A's metrics in MLflow")
    a.send_signal(signal.SIGTERM)
    a_status = a.wait(timeout=120)
    a_text = (tmp / "a.log").read_text()
    last_a = {"step": _load_driver(run_a / "checkpoints" / "last.pt")["step"]}
    steps_in_mlflow = _mlflow_steps(tmp, run_id_a)
    lock_left = (run_a / LOCK_NAME).exists()

    # last.pt unreadable: resume=auto takes the newest step file that loads (the step of last.pt,
    # or the one before when SIGTERM came between the step's end and its checkpoint)
    newest_step_file = max((run_a / "checkpoints").glob("step_*.pt"))
    last = run_a / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed_cfg = compose_config(*_common(tmp), "run_name=a", f"steps={last_a['step'] + 2}")
    resumed_cfg.run_dir = str(run_a)
    resumed_cfg.resume = "auto"
    summary_a2 = driver.train(resumed_cfg)
    return {
        "tmp": tmp,
        "second": second,
        "summary_b": summary_b,
        "a_status": a_status,
        "a_text": a_text,
        "a_last": last_a,
        "a_steps_in_mlflow": steps_in_mlflow,
        "a_run_id": run_id_a,
        "lock_left": lock_left,
        "summary_a2": summary_a2,
        "newest_step_file": newest_step_file,
    }


def _load_driver(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["driver"]


@pytest.mark.slow
def test_a_second_driver_on_a_held_folder_is_refused_naming_the_holder(scenario):
    second = scenario["second"]
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("art-train: error:")]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
    assert f"run folder {scenario['tmp'] / 'out' / 'a'} is in use by another driver" in lines[0]
    assert "pid " in lines[0] and "host " in lines[0] and "Traceback" not in second.stderr
    print("\n" + lines[0])


@pytest.mark.slow
def test_sigterm_saves_the_last_good_step_and_exits_143(scenario):
    text, status = scenario["a_text"], scenario["a_status"]
    lines = [ln for ln in text.splitlines() if ln.startswith("art-train: terminated")]
    print("\n" + (lines[0] if lines else text[-1500:]))
    assert status == 143, text[-3000:]
    assert len(lines) == 1 and "resume with: art-train resume_from=" in lines[0]
    assert f"of step {scenario['a_last']['step']} are in" in lines[0]
    for crash in ("Traceback", "Aborted", "core dumped", "Fatal Python error", "SIGABRT"):
        assert crash not in text
    assert not scenario["lock_left"]  # released on the way out
    # what reached MLflow before the stop: every step up to the saved one
    assert set(range(1, scenario["a_last"]["step"] + 1)) <= set(scenario["a_steps_in_mlflow"])


@pytest.mark.slow
def test_a_locked_store_stalls_no_step_and_both_runs_get_all_metrics(scenario):
    summary = scenario["summary_b"]
    tracking = summary["tracking"]
    assert tracking["retries"] >= 1 and "locked" in (tracking["last_error"] or "")
    assert tracking["unsent_values"] == 0 and tracking["unsent_calls"] == 0, tracking
    run_b = scenario["tmp"] / "out" / "b"
    records = read_metrics(run_b)
    assert [r["step"] for r in records] == [1, 2, 3]
    # no step waited for the store (MLflow itself waits 20 s for a locked SQLite, then raises)
    print(
        f"\nB's step times with the store locked: {[round(r['time_step_s'], 2) for r in records]}"
    )
    assert max(r["time_step_s"] for r in records) < 15
    assert _mlflow_steps(scenario["tmp"], summary["mlflow_run_id"]) == [1, 2, 3]


@pytest.mark.slow
def test_resume_auto_skips_an_unreadable_last_pt(scenario):
    summary, saved = scenario["summary_a2"], scenario["a_last"]["step"]
    run_a = scenario["tmp"] / "out" / "a"
    newest = scenario["newest_step_file"]
    assert newest.name in (f"step_{saved:06d}.pt", f"step_{saved - 1:06d}.pt")
    assert summary["resumed_from"] == str(newest)
    assert len(summary["rewards"]) == saved + 2
    assert summary["mlflow_run_id"] == scenario["a_run_id"]  # the same MLflow run goes on
    steps = [r["step"] for r in read_metrics(run_a) if "reward_mean" in r]
    assert steps == list(range(1, saved + 3))  # each step once: the repeated ones replaced


@pytest.mark.slow
def test_the_worker_count_set_by_art_scale_is_what_a_stopped_run_resumes_with(
    fresh_ray, make_cfg, tmp_path
):
    """An interrupt (what SIGTERM raises) after art-scale asked for 2 workers: last.pt keeps 2,
    and the resumed run (same command: rollout.num_workers=1) starts with 2."""
    import _thread

    from learner.driver.scale import NAMESPACE, control_name

    common = ("eval.every=0", "algo.group_size=4", "rollout.num_cpus_per_worker=0.5")
    common += ("rollout.num_workers=1", "rollout.max_workers=2", "logging.checkpoint_every=100")
    cfg = make_cfg("steps=1000", *common)  # ended by the interrupt, however late the scale comes
    run = Path(cfg.run_dir)

    failed = []  # what went wrong in the thread: the run is interrupted either way

    def scale_then_stop():
        try:
            control = _wait_for(
                lambda: _actor(fresh_ray, control_name(run.name), NAMESPACE), 120, "the control"
            )
            fresh_ray.get(control.request.remote(2))
            status = control.status.remote
            _wait_for(lambda: fresh_ray.get(status())["serving"] == 2, 120, "2 serving")
            time.sleep(1.0)
        except BaseException as err:
            failed.append(f"{err!r}; free on the cluster: {fresh_ray.available_resources()}")
        _thread.interrupt_main()

    threading.Thread(target=scale_then_stop, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        driver.train(cfg)
    assert not failed, failed
    saved = _load_driver(run / "checkpoints" / "last.pt")
    assert saved["workers_wanted"] == 2 and saved["workers_config"] == 1
    resumed = make_cfg(f"steps={saved['step'] + 1}", "resume=auto", *common)
    resumed.run_dir = str(run)
    summary = driver.train(resumed)
    assert summary["workers_per_step"][-1] == 2
    assert "num_workers: 2" in (run / "config.yaml").read_text()


def _actor(ray, name: str, namespace: str):
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def test_art_submit_refuses_a_run_folder_held_by_a_live_driver(tmp_path):
    """Checked where art-submit runs, before any cluster is contacted (the job's driver checks
    it again where it runs)."""
    with RunLock(tmp_path / "out" / "r"):
        done = subprocess.run(
            [
                str(BIN / "art-submit"), "--address", "http://127.0.0.1:9", "--",
                f"output_dir={tmp_path / 'out'}", "run_name=r", "resume=auto",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("art-submit: error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "is in use by another driver" in lines[0] and "nothing was submitted" in lines[0]
    assert f"pid {os.getpid()}" in lines[0]


# Runs inside a mount namespace of its own: a 2 MiB tmpfs at $D is the output folder. The
# steps and their exit statuses go to $SNAP (outside the tmpfs), with a copy of the run.
SMALL_DISK = r"""
set -u
D=$1; SNAP=$2; ALL_SECTIONS=$3; shift 3
mount -t tmpfs -o size=2m tmpfs "$D" || exit 90
step() { name=$1; shift; "$@" > "$SNAP/$name.log" 2>&1; echo $? > "$SNAP/$name.status"; }
COMMON="$* output_dir=$D"
# 1. the disk fills up after step 3 (another writer): the next write fails
( until grep -q "step 3/" "$SNAP/train.log" 2>/dev/null; do sleep 0.2; done
  cat /dev/zero > "$D/filler" 2>/dev/null ) &
step train art-train $COMMON run_name=r steps=40 logging.keep_checkpoints=2
wait
cp -a "$D/r" "$SNAP/r"
# 2. the full disk at start (what the failed run freed is filled too): refused at once
cat /dev/zero > "$D/filler2" 2>/dev/null
step train_new art-train $COMMON run_name=new steps=4
step compare art-compare $COMMON run_name=cmp steps=2
step eval art-eval $COMMON 'eval.conditions=[none]'
step bench art-bench --skip "$ALL_SECTIONS" --out "$D/bench"
# 3. read-only
mount -o remount,ro "$D"
step train_ro art-train $COMMON run_name=r steps=40 resume=auto
step bench_ro art-bench --skip "$ALL_SECTIONS" --out "$D/bench"
"""


def _namespace_prefix(probe_dir: Path) -> list[str] | None:
    """How to run a script with a tmpfs of its own: a mount namespace (root), or a user and
    mount namespace (unprivileged, where the kernel allows it); None if neither works."""
    for prefix in (["unshare", "-m"], ["unshare", "-Urm"]):
        try:
            probe = subprocess.run(
                [*prefix, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe_dir}"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_a_full_or_read_only_disk_ends_each_command_in_one_line(tmp_path, tiny_model_path):
    (tmp_path / "probe").mkdir()
    prefix = _namespace_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("no mount namespace here (unshare -m / -Urm) for a small tmpfs")
    disk, snap = tmp_path / "disk", tmp_path / "snap"
    disk.mkdir()
    snap.mkdir()
    overrides = [
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
        "eval.every=0",
        "algo.group_size=4",
        "logging.checkpoint_every=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}:{os.environ['PATH']}"}
    from learner.bench.cli import SECTIONS

    every_section = ",".join(SECTIONS)  # art-bench measures nothing, it writes bench.json
    subprocess.run(
        [
            *prefix,
            "bash",
            "-c",
            SMALL_DISK,
            "small-disk",
            str(disk),
            str(snap),
            every_section,
            *overrides,
        ],
        env=env,
        timeout=900,
        check=True,
    )

    def ended(name: str) -> tuple[int, str]:
        text = (snap / f"{name}.log").read_text()
        prog = {"train": "art-train", "compare": "art-compare", "eval": "art-eval"}
        prog = next((p for k, p in prog.items() if name.startswith(k)), "art-bench")
        lines = [ln for ln in text.splitlines() if ln.startswith(f"{prog}: ")]
        assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
        print(f"\n{name}: exit {int((snap / f'{name}.status').read_text())}: {lines[0]}")
        return int((snap / f"{name}.status").read_text()), lines[0]

    status, line = ended("train")  # mid-run: the disk filled up
    assert status == 1 and "[Errno 28] No space left on device" in line
    assert line.startswith(f"art-train: stopped: cannot write {disk}/r/")
    run = snap / "r"
    step = _load_driver(run / "checkpoints" / "last.pt")["step"]
    assert step >= 2 and f"checkpoints/last.pt (step {step}) is intact" in line
    assert "resume with: art-train resume_from=" in line
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert len(kept) <= 3 and kept[-1] >= f"step_{step:06d}.pt"  # keep 2 (one more if it failed)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, len(read_metrics(run)) + 1))
    for name in ("train_new", "compare", "eval"):  # the full disk, at start
        status, line = ended(name)
        assert status == 2 and "MiB free and" in line and "needs" in line, line
    status, line = ended("bench")
    assert status in (1, 2) and f"{disk}/bench" in line and "No space left on device" in line
    for name in ("train_ro", "bench_ro"):
        status, line = ended(name)
        assert status == 2 and "Read-only file system" in line and "cannot write" in line
