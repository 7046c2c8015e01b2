"""Elastic rollout workers on a local Ray instance: a worker removed while it samples loses
nothing, the pool grows and shrinks between steps, and `art-scale` reaches a run's control."""

import numpy as np
import pytest
from transformers import AutoProcessor

from learner.driver import scale
from learner.driver.cluster import create_actors, worker_factory
from learner.driver.rollouts import WorkerPool
from shared.artifact import encode_png
from shared.messages import ImageUpdate, RolloutRequest, SamplingConfig
from shared.prompts import render_prompt


def _requests(tiny_model_path, count: int = 9):
    templater = AutoProcessor.from_pretrained(tiny_model_path)
    return [
        RolloutRequest(i, render_prompt(templater, f"What letter is {i}?"), 2) for i in range(count)
    ]


def _as_tuples(groups):
    return [[(c.request_id, c.token_ids, c.logprobs) for c in g] for g in groups]


@pytest.mark.slow
def test_a_worker_removed_while_it_samples_loses_nothing(ray_local, tiny_model_path, make_cfg):
    ray = ray_local
    cfg = make_cfg("rollout.num_workers=3", "rollout.num_cpus_per_worker=0.5")
    _, workers = create_actors(cfg, ray, tiny_model_path, with_learner=False)
    pool = WorkerPool(ray, workers, max_attempts=2)
    try:
        pool.broadcast(ImageUpdate(1, encode_png(np.full((64, 64, 3), 90, np.uint8))))
        requests = _requests(tiny_model_path)
        sampling = SamplingConfig(seed=7, max_new_tokens=24)
        reference = _as_tuples(pool.generate(requests, sampling))

        pending = pool.launch(requests, sampling)
        ray.kill(workers[1], no_restart=True)  # gone for good, its chunk in flight
        groups = _as_tuples(pool.collect(pending))

        assert groups == reference  # the two left sampled its chunk, with the same seeds
        assert pool.lost == 1 and len(pool) == 2 and workers[1] not in pool.workers
        assert [g[0][0] for g in groups] == list(range(len(requests)))
        served = [s["requests"] for s in pool.stats()]
        assert served == [3 + 3 + 2, 3 + 3 + 1]  # both rounds' chunks, then the lost chunk
    finally:
        for actor in workers:
            ray.kill(actor)


@pytest.mark.slow
def test_the_pool_grows_and_shrinks_between_steps(ray_local, tiny_model_path, make_cfg):
    import time

    ray = ray_local
    cfg = make_cfg("rollout.num_workers=1", "rollout.num_cpus_per_worker=0.5")
    _, workers = create_actors(cfg, ray, tiny_model_path, with_learner=False)
    pool = WorkerPool(ray, workers, factory=worker_factory(cfg, ray, tiny_model_path))
    try:
        pool.broadcast(ImageUpdate(4, encode_png(np.full((64, 64, 3), 200, np.uint8))))
        requests = _requests(tiny_model_path, 6)
        sampling = SamplingConfig(seed=3, max_new_tokens=16)
        reference = _as_tuples(pool.generate(requests, sampling))

        pool.resize(3)
        assert len(pool) == 1 and len(pool.pending) == 2  # starting: they serve once up
        deadline = time.monotonic() + 240
        while len(pool) < 3 and time.monotonic() < deadline:
            pool.admit()
            time.sleep(0.5)
        assert len(pool) == 3 and not pool.pending
        names = [pool.name(w) for w in pool.workers]  # joiners in the order they came up
        assert names[0] == "rollout-worker-0"
        assert sorted(names) == ["rollout-worker-0", "rollout-worker-1", "rollout-worker-2"]
        versions = ray.get([w.__ray_call__.remote(lambda self: self.version) for w in pool.workers])
        assert versions == [4, 4, 4]  # the joiners got the current image
        assert _as_tuples(pool.generate(requests, sampling)) == reference
        assert [s["requests"] for s in pool.stats()] == [6 + 2, 2, 2]

        removed = pool.workers[2]
        pool.resize(2)
        assert len(pool) == 2 and removed not in pool.workers
        assert _as_tuples(pool.generate(requests, sampling)) == reference
        pool.resize(1)
        assert [pool.name(w) for w in pool.workers] == ["rollout-worker-0"]
    finally:
        for actor in pool.actors() + workers:
            ray.kill(actor)


def test_art_scale_sets_the_count_a_run_reads_at_its_next_boundary(ray_local, capsys):
    ray = ray_local

    class Pool:  # what Elastic needs of a pool, counting what it was asked
        def __init__(self):
            self.workers, self.pending, self.asked = [object()], [], []

        def __len__(self):
            return len(self.workers)

        def resize(self, n):
            self.asked.append(n)
            self.workers = [object()] * n

        def admit(self):
            return []

    pool = Pool()
    elastic = scale.Elastic(ray, pool, "run-a", workers=1, max_workers=3)
    try:
        address = ray.get_runtime_context().gcs_address
        assert scale.main(["--address", address, "--workers", "3"]) == 0
        assert '"desired": 3' in capsys.readouterr().out
        assert pool.asked == []  # nothing changes inside a step
        elastic.at_boundary(5)
        assert pool.asked == [3] and len(pool) == 3

        assert scale.main(["--address", address, "--workers", "4"]) == 1  # above max_workers
        assert "outside [1, 3]" in capsys.readouterr().err
        assert scale.main(["--address", address, "--run", "run-b", "--workers", "2"]) == 1
        assert "no run 'run-b' is running" in capsys.readouterr().err

        assert scale.main(["--address", address]) == 0  # the report
        out = capsys.readouterr().out
        assert '"step": 5' in out and '"serving": 3' in out and '"run": "run-a"' in out
    finally:
        ray.kill(elastic.control)
