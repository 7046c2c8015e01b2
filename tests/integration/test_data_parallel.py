"""Data-parallel learner replicas (learner.num_replicas): real Ray actors in a gloo group."""

import dataclasses

import numpy as np
import pytest
import torch

from learner.bench.cli import synthetic_groups
from learner.driver.cluster import create_learners, learner_settings
from learner.driver.learners import LearnerGroup
from learner.learner import Learner, LearnerSettings
from shared.config import validate


def _uneven_groups(learner):
    """Groups of completions of different lengths and rewards (replicas get unequal shares)."""
    groups = synthetic_groups(learner, prompts=3, group=4, tokens=14, seed=5)
    out = []
    for g, group in enumerate(groups):
        comps = tuple(
            dataclasses.replace(
                c, token_ids=c.token_ids[: 3 + 3 * i + g], logprobs=c.logprobs[: 3 + 3 * i + g]
            )
            for i, c in enumerate(group.completions)
        )
        rewards = tuple(float((i + g) % 3 == 0) for i in range(len(comps)))
        out.append(dataclasses.replace(group, completions=comps, rewards=rewards))
    return out


@pytest.mark.parametrize("replicas", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_replicas_gradient_equals_one_learners(ray_local, tiny_model_path, make_cfg, replicas):
    """One sequence per pass on both sides, so that every forward has the same shapes: what is
    left is the split, the global token normalization and the all-reduce. (With larger passes
    the padded shapes differ, and so do float32 results by about 1e-6 relative: as much as one
    learner's gradient moves between micro_batch_size 32 and 6, 9.8e-7.)"""
    cfg = make_cfg(
        f"learner.num_replicas={replicas}", "learner.num_cpus=0.25", "image.init=noise",
        "learner.micro_batch_size=1",
    )  # fmt: skip
    validate(cfg)
    one = Learner(learner_settings(cfg, tiny_model_path))  # the same learner, alone
    groups = _uneven_groups(one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replicas (Ray: one thread for a fractional CPU)
    try:
        (reference,) = one.batch_gradient(groups)
    finally:
        torch.set_num_threads(threads)

    group = LearnerGroup(ray_local, create_learners(cfg, ray_local, tiny_model_path))
    try:
        results = group._all("batch_gradient", groups)
        for (grad,) in results:  # every replica holds the summed gradient
            rel = float((grad - reference).norm() / reference.norm())
            print(f"{replicas} replicas: relative difference {rel:.2e}")
            assert rel <= 1e-6

        def shares_of(learner, groups):  # nested: Ray ships it by value
            from learner.learner import Batch

            batch = Batch.from_groups(groups)
            return learner.data_parallel.share(batch, range(len(batch)))

        shares = group._all("__ray_call__", shares_of, groups)
        rows = sorted(r for share in shares for r in share)
        assert rows == list(range(12)) and all(shares)  # each sequence exactly once
    finally:
        for actor in group.replicas:
            ray_local.kill(actor)


def test_replicas_with_the_shared_prefix_forward_sum_to_one_learners_gradient(
    ray_local, tiny_model_path, make_cfg
):
    """Each replica computes the prompts of its rows once (its rows of a group share them);
    the all-reduced gradient is the one learner's (float32: the passes differ in shape)."""
    cfg = make_cfg("learner.num_replicas=2", "learner.num_cpus=0.25", "image.init=noise")
    validate(cfg)
    one = Learner(learner_settings(cfg, tiny_model_path))
    assert one.policy.shared_prefix is not None
    groups = _uneven_groups(one)
    (reference,) = one.batch_gradient(groups)
    group = LearnerGroup(ray_local, create_learners(cfg, ray_local, tiny_model_path))
    try:
        for (grad,) in group._all("batch_gradient", groups):
            rel = float((grad - reference).norm() / reference.norm())
            print(f"2 replicas, shared-prefix forward: relative difference {rel:.2e}")
            assert rel <= 1e-5
    finally:
        for actor in group.replicas:
            ray_local.kill(actor)


def test_a_replica_share_is_balanced_by_tokens(tiny_model_path):
    learner = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64))
    from learner.learner import Batch

    batch = Batch.from_groups(_uneven_groups(learner))
    tokens = []
    for rank in range(2):
        learner.data_parallel.rank, learner.data_parallel.world_size = rank, 2
        share = learner.data_parallel.share(batch, range(len(batch)))
        tokens.append(sum(len(batch.prompt_ids[i]) + batch.lengths[i] for i in share))
    assert abs(tokens[0] - tokens[1]) <= max(batch.lengths)  # within one sequence


@pytest.mark.slow
def test_two_replicas_train_the_same_image_and_resume_with_one(ray_local, make_cfg, tmp_path):
    from PIL import Image

    from learner.driver.train import train

    runs = {}
    for n in (1, 2):
        cfg = make_cfg(
            "steps=5", "eval.every=0", f"learner.num_replicas={n}", "learner.num_cpus=0.5",
            "logging.checkpoint_every=1", f"output_dir={tmp_path}/n{n}",
        )  # fmt: skip
        cfg.run_dir = str(tmp_path / f"n{n}")
        runs[n] = train(cfg)
    one, two = runs[1], runs[2]
    assert two["learner_replicas"] == 2 and set(two["placement"]) >= {"learner", "learner-1"}

    # The all-reduced gradient equals one learner's up to float32 summation order (about 2e-5
    # relative here: the passes differ in shape and thread count). Adam's first step is close
    # to sign(g), and later steps amplify that, so the pixels are compared after one step;
    # after five, the same rollouts and rewards (every step samples with the image of the
    # last) and a PNG within a few levels say that both trained the same image.
    def theta(n, step):
        path = tmp_path / f"n{n}" / "checkpoints" / f"step_{step:06d}.pt"
        return torch.load(path, weights_only=True)["learner"]["theta_CHW"]

    first_rel = float((theta(1, 1) - theta(2, 1)).norm() / theta(1, 1).norm())
    assert np.allclose(one["rewards"], two["rewards"])
    a = np.asarray(Image.open(one["artifact_path"])).astype(int)
    b = np.asarray(Image.open(two["artifact_path"])).astype(int)
    diff = np.abs(a - b)
    print(
        f"after 1 step: pixel logits differ by {first_rel:.1e} relative; after 5: uint8 levels "
        f"max {diff.max()}, mean {diff.mean():.3f}, {int((diff > 0).sum())} of {diff.size} differ"
    )
    assert first_rel <= 1e-3
    assert diff.max() <= 3 and diff.mean() <= 0.25

    # the 2-replica run's step-3 checkpoint resumed with one learner, and the other way round
    checkpoint = tmp_path / "n2" / "checkpoints" / "step_000003.pt"
    cfg = make_cfg("steps=5", "eval.every=0", f"resume_from={checkpoint}")
    resumed = train(cfg)
    assert resumed["resumed_from"] == str(checkpoint) and len(resumed["rewards"]) == 5
    assert resumed["rewards"][:3] == two["rewards"][:3]
    c = np.asarray(Image.open(resumed["artifact_path"])).astype(int)
    assert np.abs(c - b).max() <= 3 and np.abs(c - b).mean() <= 0.25  # as above
    saved = torch.load(checkpoint, weights_only=True)["learner"]
    assert saved["version"] >= 1 and "rank" not in saved  # nothing of a replica's own


def test_replicas_split_minibatches_alike_whatever_lora_dropout_draws(
    ray_local, tiny_model_path, make_cfg
):
    """LoRA dropout draws from torch's default generator, a different number of times on each
    replica (their shares differ): the minibatch split has its own generator, so the replicas
    still split every later batch the same way."""
    cfg = make_cfg(
        "method=lora", "method.with_image=true", "method.lora.dropout=0.1", "algo.num_minibatches=2",
        "learner.num_replicas=2", "learner.num_cpus=0.25",
    )  # fmt: skip
    validate(cfg)
    local = Learner(learner_settings(cfg, tiny_model_path))
    groups = _uneven_groups(local)
    group = LearnerGroup(ray_local, create_learners(cfg, ray_local, tiny_model_path))
    try:
        for step in range(2):
            fresh = [
                dataclasses.replace(
                    g,
                    completions=tuple(
                        dataclasses.replace(c, image_version=step) for c in g.completions
                    ),
                )
                for g in groups
            ]
            metrics, update = group.update(fresh)
            assert update.version == step + 1
            splits = group._all("minibatches", 12)
            assert splits[0] == splits[1]
        hashes = group._all("parameter_hash")
        assert hashes[0] == hashes[1]
    finally:
        for actor in group.replicas:
            ray_local.kill(actor)
