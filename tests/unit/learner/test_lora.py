"""The LoRA baseline: only the adapter learns, and the rollout engine applies exactly it."""

import pytest
import torch

from learner.learner import Learner, LearnerSettings
from rollout_worker.hf_engine import HFEngine
from rollout_worker.worker import RolloutWorker
from shared.messages import (
    AdapterUpdate,
    RolloutRequest,
    SamplingConfig,
    ScoredGroup,
    WorkerSettings,
)
from shared.prompts import render_prompt

LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path)


def _text_groups(engine, processor, seed=0, version=0):
    prompt = render_prompt(processor, "Which letter does the picture show?", with_image=False)
    requests = [RolloutRequest(i, prompt, 6, with_image=False) for i in range(2)]
    sampling = SamplingConfig(seed=seed, max_new_tokens=6)
    groups = engine.generate(requests, None, version, sampling)
    return [
        ScoredGroup(prompt, tuple(g), tuple(float(i % 2) for i in range(len(g)))) for g in groups
    ]


def _lora_learner(path, **kwargs):
    return Learner(
        LearnerSettings(
            path, "tiny", 64, 64, method="lora", lora=LORA, with_image=False, lr=0.05, **kwargs
        )
    )


def test_only_the_adapter_changes(tiny_model_path, tiny_processor, engine):
    learner = _lora_learner(tiny_model_path)
    named = dict(learner.model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    theta = learner.image.theta_CHW.detach().clone()
    assert adapter and all(named[n].requires_grad for n in adapter)
    assert not any(named[n].requires_grad for n in base)
    metrics, update = learner.update(_text_groups(engine, tiny_processor))
    assert isinstance(update, AdapterUpdate) and update.version == 1
    assert metrics["grad_norm"] > 0 and metrics["adapter_bytes"] == len(update.weights)
    for name, before in base.items():
        assert torch.equal(named[name], before), name  # the base model is bit-identical
    assert any(not torch.equal(named[n], before) for n, before in adapter.items())
    assert torch.equal(learner.image.theta_CHW, theta)  # and the pixels never move
    assert learner.num_trainable() == sum(v.numel() for v in adapter.values())


def test_rollouts_with_the_broadcast_adapter_agree_with_the_learner(
    tiny_model_path, tiny_processor, engine
):
    learner = _lora_learner(tiny_model_path)
    learner.update(_text_groups(engine, tiny_processor))
    learner.update(_text_groups(engine, tiny_processor, seed=1, version=1))  # B != 0 now
    update = learner.policy_update()
    worker = RolloutWorker(WorkerSettings("hf", tiny_model_path))
    assert worker.set_adapter(update.version, update.config, update.weights) == 2
    prompt = render_prompt(tiny_processor, "What letter is it?", with_image=False)
    groups = worker.generate(
        [RolloutRequest(0, prompt, 8, with_image=False)], SamplingConfig(seed=3, max_new_tokens=6)
    )
    completions = groups[0]
    assert {c.image_version for c in completions} == {2}  # the adapter's version
    recomputed = learner.compute_logprobs(completions)
    diffs = [
        abs(a - b)
        for c, lp in zip(completions, recomputed, strict=True)
        for a, b in zip(c.logprobs, lp, strict=True)
    ]
    assert sum(diffs) / len(diffs) <= 1e-5  # float32 on both sides
    base = RolloutWorker(WorkerSettings("hf", tiny_model_path)).generate(
        [RolloutRequest(0, prompt, 8, with_image=False)], SamplingConfig(seed=3, max_new_tokens=6)
    )[0]
    assert [c.logprobs for c in base] != [c.logprobs for c in completions]  # it did something
    worker.clear_adapter()
    cleared = worker.generate(
        [RolloutRequest(0, prompt, 8, with_image=False)], SamplingConfig(seed=3, max_new_tokens=6)
    )[0]
    for x, y in zip(cleared, base, strict=True):  # the base model again
        assert x.token_ids == y.token_ids
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-6)


def test_stale_completions_are_scored_under_the_adapter_they_were_sampled_with(
    tiny_model_path, tiny_processor, engine
):
    learner = _lora_learner(tiny_model_path, num_minibatches=1, max_staleness=1)
    stale = _text_groups(engine, tiny_processor, seed=1)  # sampled with version 0 (B = 0)
    learner.update(_text_groups(engine, tiny_processor))  # version 0 -> 1
    completions = [c for g in stale for c in g.completions]
    drift = [
        abs(a - b)
        for c, lp in zip(completions, learner.compute_logprobs(completions), strict=True)
        for a, b in zip(c.logprobs, lp, strict=True)
    ]
    assert sum(drift) / len(drift) > 1e-3  # the adapter moved enough to tell them apart
    metrics, update = learner.update(stale)
    assert metrics["stale_completion_frac"] == 1.0 and update.version == 2
    assert metrics["mismatch_abs_mean"] < 1e-5  # scored under version 0's adapter


def test_an_engine_takes_adapters_of_different_shapes_one_after_another(
    tiny_model_path, tiny_processor
):
    worker = RolloutWorker(WorkerSettings("hf", tiny_model_path))
    prompt = render_prompt(tiny_processor, "What letter is it?", with_image=False)
    request = [RolloutRequest(0, prompt, 2, with_image=False)]
    for version, rank in ((1, 8), (2, 4)):
        settings = dict(LORA, rank=rank, target_modules=["q_proj", "up_proj"][:version])
        update = Learner(
            LearnerSettings(
                tiny_model_path, "tiny", 64, 64, method="lora", lora=settings, with_image=False
            )
        ).policy_update()
        assert worker.set_adapter(version, update.config, update.weights) == version
        groups = worker.generate(request, SamplingConfig(seed=0, max_new_tokens=4))
        assert {c.image_version for c in groups[0]} == {version}


def test_with_dropout_the_old_log_probs_come_from_the_policy_not_the_dropout_forward(
    tiny_model_path, tiny_processor, engine
):
    """LoRA dropout acts in the gradient forward only, so that forward cannot double as the
    old log-probs: they take their own pass, which equals what the engine sampled with."""
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 64, method="lora", with_image=False, num_minibatches=1,
        lora=dict(LORA, dropout=0.5),
    ))  # fmt: skip
    learner.update(_text_groups(engine, tiny_processor))  # B != 0: dropout now matters
    worker = RolloutWorker(WorkerSettings("hf", tiny_model_path))
    update = learner.policy_update()
    worker.set_adapter(update.version, update.config, update.weights)
    prompt = render_prompt(tiny_processor, "What letter is it?", with_image=False)
    groups = worker.generate(
        [RolloutRequest(i, prompt, 4, with_image=False) for i in range(2)],
        SamplingConfig(seed=5, max_new_tokens=6),
    )
    scored = [ScoredGroup(prompt, tuple(g), tuple(float(i % 2) for i in range(4))) for g in groups]
    metrics, _ = learner.update(scored)
    assert metrics["old_logprob_passes"] == 1
    assert metrics["mismatch_abs_mean"] < 1e-5
