"""max_staleness: 0 is the plain synchronous loop; 1 samples the next step during the update."""

import shutil
from pathlib import Path

import pytest

from learner.driver import train as driver
from learner.driver.cluster import create_actors
from learner.driver.rollouts import PromptSampler, WorkerPool, compute_rollouts, prompt_builder
from learner.driver.tracking import mean
from shared.tasks import load_task

COMMON = ("eval.every=0", "algo.group_size=4", "steps=3")


def test_max_staleness_0_is_the_synchronous_loop_step_for_step(
    ray_local, make_cfg, tiny_model_path
):
    """The driver with max_staleness=0 against the algorithm written out by hand: sample,
    score, filter, update, broadcast; same seeds, so the same rewards and the same PNG."""
    cfg = make_cfg(*COMMON, "algo.max_staleness=0")
    summary = driver.train(cfg)

    ray = ray_local
    learner, workers = create_actors(cfg, ray, tiny_model_path)
    pool = WorkerPool(ray, workers)
    try:
        task = load_task(cfg.task.name, **cfg.task.options)
        sampler = PromptSampler(task.examples(cfg.task.split), seed=cfg.seed)
        prompt_for = prompt_builder(cfg, tiny_model_path)
        update = ray.get(learner.image_update.remote())
        pool.broadcast(update)
        rewards = []
        for step in range(cfg.steps):
            rollouts = compute_rollouts(cfg, pool, task, sampler, prompt_for, step)
            rewards.append(mean(rollouts.first_round_rewards))
            if rollouts.kept:
                _, update = ray.get(learner.update.remote(rollouts.kept))
                pool.broadcast(update)
    finally:
        for actor in [learner, *workers]:
            ray.kill(actor)
    assert summary["rewards"] == rewards
    assert Path(summary["image_path"]).read_bytes() == update.png


def test_overlap_samples_one_step_stale_and_resumes_exactly(ray_local, tmp_path, make_cfg):
    import mlflow

    cfg = make_cfg(
        "eval.every=0",
        "algo.group_size=4",
        "steps=4",
        "logging.checkpoint_every=2",
        "algo.max_staleness=1",
    )
    cfg.run_dir = str(tmp_path / "whole")
    whole = driver.train(cfg)
    assert whole["max_staleness"] == 1 and len(whole["rewards"]) == 4
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    stale = mlflow.MlflowClient().get_metric_history(
        whole["mlflow_run_id"], "stale_completion_frac"
    )
    assert max(m.value for m in stale if m.step >= 2) > 0  # step t+1 was sampled with image t

    # Resume from the middle of the run: the checkpoint holds the round sampled ahead.
    shutil.copytree(tmp_path / "whole", tmp_path / "copy")
    (tmp_path / "copy/art.png").unlink()
    resumed = make_cfg(
        "eval.every=0", "algo.group_size=4", "steps=4", "logging.checkpoint_every=2",
        "algo.max_staleness=1", f"resume_from={tmp_path / 'copy/checkpoints/step_000002.pt'}",
    )  # fmt: skip
    again = driver.train(resumed)
    assert again["rewards"] == whole["rewards"]
    assert (tmp_path / "copy/art.png").read_bytes() == (tmp_path / "whole/art.png").read_bytes()


@pytest.mark.slow
def test_the_embedded_default_learns_with_overlap(ray_local, make_cfg):
    summary = driver.train(make_cfg("algo.max_staleness=1", "eval.every=0"))
    print(f"\\noverlapped: reward {summary['reward_first5']:.3f} -> {summary['reward_last5']:.3f}")
    assert summary["reward_last5"] - summary["reward_first5"] >= 0.3
