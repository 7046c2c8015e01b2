"""Two rollout workers and the learner as Ray actors on a local Ray instance."""

import numpy as np
from transformers import AutoProcessor

from learner.driver.cluster import create_actors
from learner.driver.rollouts import PromptSampler, WorkerPool, compute_rollouts
from shared.artifact import encode_png
from shared.messages import ImageUpdate, RolloutRequest, SamplingConfig
from shared.prompts import render_prompt
from shared.tasks import load_task


def test_three_steps_with_two_workers(ray_local, tiny_model_path, make_cfg):
    ray = ray_local
    cfg = make_cfg("rollout.num_workers=2", "algo.prompts_per_step=4", "algo.group_size=4")
    learner, workers = create_actors(cfg, ray, tiny_model_path)
    pool = WorkerPool(ray, workers)
    try:
        task = load_task("synthetic", target="F")
        templater = AutoProcessor.from_pretrained(tiny_model_path)
        sampler = PromptSampler(task.examples("train"), seed=0)

        def prompts_for(example, with_image=True):
            return render_prompt(templater, example.question, with_image=with_image)

        update = ray.get(learner.image_update.remote())
        pool.broadcast(update)
        mismatches = []
        for step in range(3):
            rollouts = compute_rollouts(cfg, pool, task, sampler, prompts_for, step)
            completions = [c for g in rollouts.kept for c in g.completions]
            assert {c.image_version for c in completions} <= {update.version}
            if rollouts.kept:
                recomputed = ray.get(learner.compute_logprobs.remote(completions))
                mismatches += [
                    abs(a - b)
                    for c, lp in zip(completions, recomputed, strict=True)
                    for a, b in zip(c.logprobs, lp, strict=True)
                ]
                metrics, update = ray.get(learner.update.remote(rollouts.kept))
                assert metrics["stale_completion_frac"] == 0.0
                pool.broadcast(update)
        latest = ray.get(learner.image_update.remote()).version
        assert latest >= 1
        versions = [w.__ray_call__.remote(lambda self: self.version) for w in workers]
        assert ray.get(versions) == [latest, latest]
        assert mismatches and np.mean(mismatches) <= 1e-4
        infos = ray.get([w.info.remote() for w in workers])
        node_ids = {i["node_id"] for i in infos}
        assert len(infos) == 2 and None not in node_ids
    finally:
        for actor in [learner, *workers]:
            ray.kill(actor)


def test_prompts_are_spread_over_all_workers(ray_local, tiny_model_path, make_cfg):
    ray = ray_local
    cfg = make_cfg("rollout.num_workers=3")
    _, workers = create_actors(cfg, ray, tiny_model_path, with_learner=False)
    pool = WorkerPool(ray, workers)
    try:
        pool.broadcast(ImageUpdate(0, encode_png(np.zeros((64, 64, 3), np.uint8))))
        templater = AutoProcessor.from_pretrained(tiny_model_path)
        prompt = render_prompt(templater, "What letter is it?")
        requests = [RolloutRequest(i, prompt, 2) for i in range(7)]
        groups = pool.generate(requests, SamplingConfig(seed=0))
        assert [g[0].request_id for g in groups] == list(range(7))
        # Contiguous chunks of ceil(7 / 3) = 3: every worker sampled, none twice.
        served = pool.stats()
        assert [s["requests"] for s in served] == [3, 3, 1]
        assert [s["completions"] for s in served] == [6, 6, 2]
        assert pool.sync_bytes == len(pool.update.png)
    finally:
        for actor in workers:
            ray.kill(actor)
