"""max_staleness: 0 is the plain synchronous loop; 1 samples the next step during the update."""

import shutil
from pathlib import Path

import pytest

from learner.driver import train as driver
from learner.driver.cluster import create_actors
from shared.tasks import load_task

COMMON = ("eval.every=0", "algo.group_size=4", "steps=3")


def test_max_staleness_0_is_the_synchronous_loop_step_for_step(
    ray_local, make_cfg, tiny_model_path, tiny_processor
):
    """The driver with max_staleness=0 against the algorithm written out here without the
    driver's code (no PromptSampler, WorkerPool, compute_rollouts or prompt builder): the
    prompt order, the rounds of dynamic sampling, scoring and the filter by hand, every request
    sent to one worker (seeds are per request, so the driver's split over two workers must not
    matter); the learner and the workers are the same classes. Same rewards, same PNG."""
    import random

    from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
    from shared.prompts import render_prompt
    from shared.sampling import round_seed

    cfg = make_cfg(*COMMON, "algo.max_staleness=0")
    summary = driver.train(cfg)
    algo = cfg.algo

    ray = ray_local
    learner, workers = create_actors(cfg, ray, tiny_model_path)
    worker = workers[0]
    try:
        task = load_task(cfg.task.name, **cfg.task.options)
        examples, order, rng = task.examples(cfg.task.split), [], random.Random(cfg.seed)

        def take(n):  # shuffle the indices, pop from the end, reshuffle when spent
            out = []
            for _ in range(n):
                if not order:
                    order.extend(range(len(examples)))
                    rng.shuffle(order)
                out.append(examples[order.pop()])
            return out

        update = ray.get(learner.image_update.remote())
        ray.get(worker.set_image.remote(update.version, update.png))
        rewards = []
        for step in range(cfg.steps):
            kept, rounds = [], 0
            while len(kept) < algo.prompts_per_step and rounds <= algo.max_extra_rounds:
                batch = take(algo.prompts_per_step)
                prompts = [render_prompt(tiny_processor, ex.question) for ex in batch]
                sampling = SamplingConfig(
                    temperature=algo.temperature,
                    max_new_tokens=task.max_new_tokens,
                    seed=round_seed(cfg.seed, step, rounds),
                )
                requests = [RolloutRequest(i, p, algo.group_size) for i, p in enumerate(prompts)]
                groups = ray.get(worker.generate.remote(requests, sampling))
                for ex, prompt, group in zip(batch, prompts, groups, strict=True):
                    acc = tuple(task.score(ex, c.text) for c in group)
                    rew = tuple(task.reward(ex, c.text) for c in group)
                    if rounds == 0:
                        rewards.extend(rew)
                    if len(set(acc)) > 1:  # some right, some wrong
                        kept.append(ScoredGroup(prompt, tuple(group), rew, acc))
                rounds += 1
            if kept:
                _, update = ray.get(learner.update.remote(kept[: algo.prompts_per_step]))
                ray.get(worker.set_image.remote(update.version, update.png))
            n = algo.prompts_per_step * algo.group_size
            rewards[-n:] = [sum(rewards[-n:]) / n]  # the step's first-round mean
    finally:
        for actor in [learner, *workers]:
            ray.kill(actor)
    assert summary["rewards"] == pytest.approx(rewards, abs=1e-12)
    assert Path(summary["image_path"]).read_bytes() == update.png


@pytest.mark.slow
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
