"""The LoRA baseline: only the adapter learns, and the rollout engine applies exactly it."""

import pytest
import torch

from learner.learner import Learner
from rollout_worker.hf_engine import HFEngine
from rollout_worker.worker import RolloutWorker
from shared.messages import AdapterUpdate, RolloutRequest, SamplingConfig, ScoredGroup
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
        path, "tiny", 64, 64, method="lora", lora=LORA, with_image=False, lr=0.05, **kwargs
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
    worker = RolloutWorker("hf", tiny_model_path)
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
    base = RolloutWorker("hf", tiny_model_path).generate(
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
