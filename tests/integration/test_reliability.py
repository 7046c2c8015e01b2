"""Processes that die mid-run: a rollout worker (restarted, the run goes on) and the learner
(the run stops with its outputs saved and says how to resume). Real processes are killed."""

import json
import os
import signal
import threading
import time

import pytest

from learner.driver import train as driver
from shared.artifact import decode_png
from shared.errors import RunStoppedError


def _kill_when(ray, actor_name: str, ready, timeout_s: float = 240.0) -> list[int]:
    """Kill the actor's process (SIGKILL) once `ready(actor)` holds; returns [pid] when done."""
    killed: list[int] = []

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not killed:
            try:
                actor = ray.get_actor(actor_name)
                if ready(actor):
                    pid = ray.get(actor.info.remote(), timeout=10)["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            except Exception:
                pass
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.mark.slow
def test_a_killed_rollout_worker_is_restarted_and_the_run_finishes(ray_local, tmp_path, make_cfg):
    ray = ray_local
    killed = _kill_when(
        ray,
        "rollout-worker-0",
        lambda w: ray.get(w.stats.remote(), timeout=10)["requests"] >= 6,
    )
    cfg = make_cfg("steps=6", "eval.every=0", "algo.group_size=4", "rollout.max_restarts=2")
    summary = driver.train(cfg)
    assert killed, "the worker was never killed"
    assert len(summary["rewards"]) == 6 and summary["worker_restarts"] >= 1
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    logged = mlflow.get_run(summary["mlflow_run_id"]).data.metrics
    assert logged["worker_restarts"] >= 1
    history = mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "reward_mean")
    assert [m.step for m in history] == list(range(1, 7))


@pytest.mark.slow
@pytest.mark.parametrize("replicas,killed_name", [(1, "learner"), (2, "learner-1")])
def test_a_dead_learner_stops_the_run_with_its_last_good_outputs(
    ray_local, tmp_path, make_cfg, replicas, killed_name
):
    """One learner, or one of two data-parallel replicas: the run stops the same way, and
    resumes (the replicas' run with one learner)."""
    ray = ray_local
    killed = _kill_when(
        ray,
        killed_name,
        lambda learner: ray.get(learner.image_update.remote(), timeout=10).version >= 2,
    )
    cfg = make_cfg(
        "steps=30", "eval.every=0", "algo.group_size=4", "logging.checkpoint_every=100",
        f"learner.num_replicas={replicas}", "learner.num_cpus=0.5",
    )  # fmt: skip
    with pytest.raises(RunStoppedError, match="learner died") as info:
        driver.train(cfg)
    assert killed
    run = tmp_path / "run"
    assert f"resume_from={run / 'checkpoints' / 'last.pt'}" in str(info.value)
    import torch

    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    step = state["driver"]["step"]
    assert 1 <= step < 30  # the last step whose update and state both came back
    _, meta = decode_png((run / "art.png").read_bytes())
    assert meta["step"] == str(state["learner"]["version"])
    # and the run can go on from there
    resumed = make_cfg("steps=" + str(step + 1), f"resume_from={run / 'checkpoints/last.pt'}")
    resumed.eval.every = 0
    assert len(driver.train(resumed)["rewards"]) == step + 1
    assert json.loads((run / "summary.json").read_text())["resumed_from"]
