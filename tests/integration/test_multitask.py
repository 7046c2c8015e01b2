"""Several tasks in one run on one frozen model (learner/driver/multitask.py): every task of
`tasks=letters4` learns, a task's image after the run is byte for byte its solo run's, tasks
join and leave a running run (`art-tasks`), and a task whose rewards fail stops alone."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from learner.driver.cli import compose_config
from learner.driver.multitask import check_entry
from learner.driver.tasks_cli import parse_entry
from learner.driver.train import train
from shared.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _cfg(tmp_path, name, *overrides):
    return compose_config(
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
        "eval.every=0", *overrides, run_dir=str(tmp_path / name),
    )  # fmt: skip


def test_a_tasks_entry_sets_task_fields_only_and_art_tasks_parses_settings():
    check_entry("f", {"name": "synthetic", "options": {"target": "F"}, "steps": 3, "weight": 2})
    with pytest.raises(UserError, match="tasks.f.model: a task sets its task fields"):
        check_entry("f", {"name": "synthetic", "model": "tiny"})
    with pytest.raises(UserError, match="a task's name is a folder"):
        check_entry("a b", {})
    entry = parse_entry(["name=synthetic", "options.target=C", "steps=5", "weight=0.5"])
    assert entry == {"name": "synthetic", "options": {"target": "C"}, "steps": 5, "weight": 0.5}


@pytest.mark.slow
def test_every_task_learns_and_each_image_is_its_solo_runs(ray_local, tmp_path):
    """letters4 for 30 steps: every task's reward rises; task f's art.png equals, byte for
    byte, a run of the synthetic task with target F alone (same seed, same settings)."""
    multi = train(_cfg(tmp_path, "multi", "tasks=letters4", "steps=30"))
    for name, task in multi["tasks"].items():
        print(f"\n{name}: {task['reward_first5']:.3f} -> {task['reward_last5']:.3f}")
        assert task["ended"] == "done" and task["steps"] == 30
        assert task["reward_last5"] >= task["reward_first5"] + 0.3, name
    solo = train(_cfg(tmp_path, "solo", "steps=30"))
    f = json.loads((tmp_path / "multi/tasks/f/summary.json").read_text())
    assert f["rewards"] == solo["rewards"]  # the same samples, step for step
    assert (tmp_path / "multi/tasks/f/art.png").read_bytes() == (
        tmp_path / "solo/art.png"
    ).read_bytes()
    for name in ("f", "b", "d", "h"):  # what art-serve --tasks <run>/tasks serves, and a card
        folder = tmp_path / "multi/tasks" / name
        assert (folder / "art.png").is_file() and (folder / "README.md").is_file()
    manifest = json.loads((tmp_path / "multi/tasks.json").read_text())
    assert {n: t["step"] for n, t in manifest.items()} == {"f": 30, "b": 30, "d": 30, "h": 30}


@pytest.mark.slow
def test_tasks_join_and_leave_a_running_run_and_a_failing_task_stops_alone(tmp_path):
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(yaml.safe_dump({
        "f": {"name": "synthetic", "options": {"target": "F"}},
        "b": {"name": "synthetic", "options": {"target": "B"}},
        "bad": {"name": "synthetic", "rewards": [f"{REPO}/tests/fixtures/extensions/raising_reward.py:boom"],
                "reward_processes": 0},
    }))  # fmt: skip
    run = tmp_path / "run"
    cmd = [str(BIN / "art-train"), f"tasks_file={tasks_file}", "steps=12", "eval.every=0",
           f"output_dir={tmp_path}", "run_name=run", f"logging.tracking_uri=sqlite:///{tmp_path}/m.db"]  # fmt: skip
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            manifest = run / "tasks.json"
            if manifest.is_file() and json.loads(manifest.read_text())["f"]["step"] >= 2:
                break
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.5)
        tasks = [str(BIN / "art-tasks")]
        added = subprocess.run([*tasks, "add", str(run), "c", "name=synthetic", "options.target=C",
                                "steps=3"], capture_output=True, text=True)  # fmt: skip
        assert added.returncode == 0, added.stderr
        removed = subprocess.run([*tasks, "remove", str(run), "b"], capture_output=True, text=True)
        assert removed.returncode == 0, removed.stderr
        broken = subprocess.run([*tasks, "add", str(run), "broken", "name=synthetic",
                                 f"init={tmp_path}/no-such.png"], capture_output=True, text=True)  # fmt: skip
        assert broken.returncode == 0, broken.stderr  # accepted here, refused by the run alone
        assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    manifest = json.loads((run / "tasks.json").read_text())
    print(manifest)
    assert "broken" not in manifest  # refused in one line; the run went on
    assert "art-tasks add broken refused" in (tmp_path / "train.log").read_text()
    assert manifest["f"]["ended"] == "done" and manifest["f"]["step"] == 12
    assert manifest["b"]["ended"].startswith("removed") and 2 <= manifest["b"]["step"] < 12
    assert manifest["c"]["ended"] == "done" and manifest["c"]["step"] == 3
    assert (
        manifest["bad"]["ended"].startswith("stopped: rewards failed")
        and manifest["bad"]["step"] == 0
    )
    for name in ("b", "c"):  # a removed task keeps its outputs, an added one has them
        assert (run / "tasks" / name / "art.png").is_file()
        assert (run / "tasks" / name / "checkpoints" / "last.pt").is_file()
    listed = subprocess.run(
        [str(BIN / "art-tasks"), "list", str(run)], capture_output=True, text=True
    )
    assert "c " in listed.stdout and "removed" in listed.stdout
    bad = subprocess.run(
        [str(BIN / "art-tasks"), "list", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a multi-task run" in bad.stderr
    assert os.path.getsize(run / "tasks.control.jsonl") > 0


@pytest.mark.slow
def test_a_multitask_run_resumes_exactly_with_the_tasks_it_had(ray_local, tmp_path):
    """2 steps, then resume=auto to 4: every task's image and rewards are the 4-step run's."""
    whole = train(_cfg(tmp_path, "whole", "tasks=letters4", "steps=4"))
    train(_cfg(tmp_path, "part", "tasks=letters4", "steps=2", "logging.checkpoint_every=2"))
    again = train(_cfg(tmp_path, "part", "steps=4", "resume=auto"))  # no tasks= given: its own
    assert set(again["tasks"]) == {"f", "b", "d", "h"}
    for name in ("f", "b", "d", "h"):
        assert again["tasks"][name]["rewards"] == whole["tasks"][name]["rewards"], name
        part, full = (tmp_path / d / "tasks" / name / "art.png" for d in ("part", "whole"))
        assert part.read_bytes() == full.read_bytes(), name


@pytest.mark.slow
def test_art_serve_serves_every_task_by_name_while_they_train(tmp_path):
    """docs/multi-task.md's train-and-serve: the gateway over `<run>/tasks` lists each task as
    soon as the run starts and serves each new art.png as the run writes it."""
    import httpx
    from fastapi.testclient import TestClient

    from rollout_worker.gateway.app import GatewayConfig, create_app

    def engine(request):  # a FAKE OpenAI backend: the gateway needs nothing else here
        return httpx.Response(200, json={"id": "c", "model": "tiny", "choices": []})

    tasks_file = tmp_path / "two.yaml"
    tasks_file.write_text(yaml.safe_dump({"f": {"name": "synthetic", "options": {"target": "F"}},
                                          "b": {"name": "synthetic", "options": {"target": "B"}}}))  # fmt: skip
    cmd = [str(BIN / "art-train"), f"tasks_file={tasks_file}", "steps=6", "eval.every=0",
           "logging.checkpoint_every=2", f"output_dir={tmp_path}", "run_name=run",
           f"logging.tracking_uri=sqlite:///{tmp_path}/m.db"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "tasks").is_dir() and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its tasks folder existed"
        time.sleep(0.3)
    config = GatewayConfig(tasks=str(tmp_path / "run" / "tasks"), backends=("http://e",),
                           model="tiny", rescan_interval_s=0.2)  # fmt: skip
    steps_seen = {"f": set(), "b": set()}
    try:
        with TestClient(create_app(config, httpx.MockTransport(engine))) as client:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                for m in client.get("/v1/models").json()["data"]:
                    if m["id"] in steps_seen:
                        steps_seen[m["id"]].add(int(m["art"]["step"]))
                time.sleep(0.3)
            reply = client.post("/v1/chat/completions", json={
                "model": "b", "messages": [{"role": "user", "content": "Letter?"}]})  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and reply.status_code == 200
    for name, steps in steps_seen.items():  # the seed, then newer images, picked up live
        assert 0 in steps and max(steps) >= 2, (name, steps)
