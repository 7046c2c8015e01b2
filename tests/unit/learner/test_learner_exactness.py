"""The learner does less work than a naive one and gets the same gradient."""

import pytest

from learner.bench.naive import naive_gradient, optimized_gradient
from learner.learner import Learner
from rollout_worker.hf_engine import HFEngine
from shared.artifact import png_to_pil
from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.prompts import render_prompt


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path)


def _groups(learner, engine, processor, seed=0, n=4, prompts=2):
    update = learner.image_update()
    questions = ["Which letter does the picture show?", "What letter is it?"]
    requests = [
        RolloutRequest(i, render_prompt(processor, questions[i % 2]), n) for i in range(prompts)
    ]
    sampling = SamplingConfig(seed=seed, max_new_tokens=6)
    groups = engine.generate(requests, png_to_pil(update.png), update.version, sampling)
    return [
        ScoredGroup(r.prompt, tuple(g), tuple(float(i % 2) for i in range(len(g))))
        for r, g in zip(requests, groups, strict=True)
    ]


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_optimized_and_naive_learners_give_the_same_gradient(
    tiny_model_path, tiny_processor, engine
):
    # micro-batches of 3 over 8 sequences: the shared image features take 3 accumulations
    learner = Learner(tiny_model_path, "tiny", 64, 64, init="noise", micro_batch_size=3)
    groups = _groups(learner, engine, tiny_processor)
    fast = optimized_gradient(learner, groups)
    slow = naive_gradient(learner, groups)
    assert fast.abs().sum() > 0
    assert _relative(fast, slow) <= 1e-5
    assert all(not p.requires_grad and p.grad is None for p in learner.model.parameters())


def test_no_old_logprob_pass_when_it_equals_the_current_policy(
    tiny_model_path, tiny_processor, engine
):
    one = Learner(tiny_model_path, "tiny", 64, 64, init="noise", num_minibatches=1)
    metrics, _ = one.update(_groups(one, engine, tiny_processor))
    assert metrics["old_logprob_passes"] == 0 and metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["mismatch_abs_mean"] < 1e-4  # the first forward doubled as the old pass
    two = Learner(tiny_model_path, "tiny", 64, 64, init="noise", num_minibatches=2)
    metrics, _ = two.update(_groups(two, engine, tiny_processor))
    assert metrics["old_logprob_passes"] == 1  # for the second minibatch only
    assert metrics["mismatch_abs_mean"] < 1e-4


def test_stale_completions_are_scored_under_the_image_they_were_sampled_with(
    tiny_model_path, tiny_processor, engine
):
    learner = Learner(
        tiny_model_path, "tiny", 64, 64, init="noise", lr=0.5, num_minibatches=1, max_staleness=1
    )
    fresh, stale = (
        _groups(learner, engine, tiny_processor, 0),
        _groups(learner, engine, tiny_processor, 1),
    )
    learner.update(fresh)  # version 0 -> 1; `stale` was sampled with version 0
    completions = [c for g in stale for c in g.completions]
    under_new = learner.compute_logprobs(completions)
    drift = sum(
        abs(a - b)
        for c, lp in zip(completions, under_new, strict=True)
        for a, b in zip(c.logprobs, lp, strict=True)
    ) / sum(len(c.logprobs) for c in completions)
    assert drift > 1e-3  # the image moved enough to tell the two apart
    metrics, update = learner.update(stale)
    assert metrics["stale_completion_frac"] == 1.0 and update.version == 2
    assert metrics["mismatch_abs_mean"] < 1e-4  # old log-probs under version 0, as sampled
    assert metrics["old_logprob_passes"] == 1
    assert sorted(learner.history) == [1]  # only what max_staleness=1 can still need
    with pytest.raises(ValueError, match="sampled with version 0, the learner is at 2"):
        learner.update(stale)
