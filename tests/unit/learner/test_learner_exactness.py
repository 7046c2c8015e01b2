"""The learner does less work than a naive one and gets the same gradient."""

import numpy as np
import pytest

from learner.bench.naive import naive_gradient, optimized_gradient
from learner.learner import Learner, LearnerSettings
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
    learner = Learner(
        LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", micro_batch_size=3)
    )
    groups = _groups(learner, engine, tiny_processor)
    fast = optimized_gradient(learner, groups)
    slow = naive_gradient(learner, groups)
    assert fast.abs().sum() > 0
    assert _relative(fast, slow) <= 1e-5
    assert all(not p.requires_grad and p.grad is None for p in learner.model.parameters())


def test_no_old_logprob_pass_when_it_equals_the_current_policy(
    tiny_model_path, tiny_processor, engine
):
    one = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", num_minibatches=1))
    metrics, _ = one.update(_groups(one, engine, tiny_processor))
    assert metrics["old_logprob_passes"] == 0 and metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["mismatch_abs_mean"] < 1e-4  # the first forward doubled as the old pass
    two = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", num_minibatches=2))
    metrics, _ = two.update(_groups(two, engine, tiny_processor))
    assert metrics["old_logprob_passes"] == 1  # for the second minibatch only
    assert metrics["mismatch_abs_mean"] < 1e-4


def test_stale_completions_are_scored_under_the_image_they_were_sampled_with(
    tiny_model_path, tiny_processor, engine
):
    learner = Learner(
        LearnerSettings(
            tiny_model_path,
            "tiny",
            64,
            64,
            init="noise",
            lr=0.5,
            num_minibatches=1,
            max_staleness=1,
        )
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


def test_the_pixel_gradient_equals_hfs_own_pixel_values_forward_with_every_clip_active(
    tiny_model_path, tiny_processor, engine
):
    """An independent path: the model's own forward from the processor's `pixel_values` of
    the PNG (HF's vision call and feature placement, no `mm_encoder_outputs` injection, logits
    over every position) and the clipped objective written out here, backpropagated to
    `pixel_values`; against the gradient the learner's path gives its own patches. The
    completions were sampled under another image and their old log-probs shifted, so the
    ratios are far from 1 and the low, high and dual clips all act."""
    import torch

    from learner.dapo import group_advantages
    from learner.learner import Batch

    sampler = Learner(LearnerSettings(tiny_model_path, "tiny", 64, 64, init="noise", seed=0))
    groups = _groups(sampler, engine, tiny_processor, n=8, prompts=2)
    eps_low, eps_high, c = 0.1, 0.5, 1.5
    learner = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 64, init="noise", seed=1, micro_batch_size=3,
        eps_low=eps_low, eps_high=eps_high, clip_ratio_c=c,
    ))  # fmt: skip
    batch = Batch.from_groups(groups)
    advantages_B = group_advantages(batch.rewards_GN).reshape(-1)
    # Old log-probs: the engine's, shifted by -1.5, 0 or +1.5 nats in turn, so that every clip
    # acts whatever this build's ratios are (a factor e^1.5 = 4.5 either way: above 1 + eps_high
    # and c, below 1 - eps_low), on sequences of both advantage signs (rewards alternate).
    old_BT = torch.zeros(len(batch), batch.max_len)
    for i, lp in enumerate(batch.rollout_logprobs):
        shift_T = torch.tensor([(-1.5, 0.0, 1.5)[(i + t) % 3] for t in range(len(lp))])
        old_BT[i, : len(lp)] = torch.tensor(lp) + shift_T
    num_tokens = sum(batch.lengths)

    # the learner's path, with the gradient its patches receive kept
    visual = learner.model.model
    encode, kept = visual.get_image_features, {}

    def keep_patches(patches, *args, **kwargs):
        patches.retain_grad()
        kept["patches"] = patches
        return encode(patches, *args, **kwargs)

    visual.get_image_features = keep_patches
    try:
        totals = learner.accumulate_gradient(
            batch, list(range(len(batch))), old_BT, advantages_B, fill_old=set()
        )
    finally:
        visual.get_image_features = encode
    ours_NP = kept["patches"].grad

    # the reference: the processor's pixel_values, the model's own forward, the loss by hand
    png = png_to_pil(learner.image_update().png)
    prompt = groups[0].prompt
    inputs = tiny_processor(text=[prompt], images=[png], return_tensors="pt")
    pixel_values = inputs["pixel_values"].clone().requires_grad_(True)
    np.testing.assert_allclose(  # the same patches: the learner preprocesses as HF does
        kept["patches"].detach().numpy(), pixel_values.detach().numpy(), atol=1e-6
    )
    banned = learner.policy.suppress_ids
    for i in range(len(batch)):
        ids = torch.tensor([list(batch.prompt_ids[i]) + list(batch.token_ids[i])])
        logits = (
            learner.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=pixel_values,
                image_grid_thw=inputs["image_grid_thw"],
                mm_token_type_ids=(ids == learner.policy.image_token_id).int(),
            )
            .logits[0]
            .float()
        )
        logits[:, banned] = float("-inf")
        logp = torch.log_softmax(logits, -1)
        start, n = len(batch.prompt_ids[i]), len(batch.token_ids[i])
        targets = ids[0, start : start + n]
        lp_T = logp[start - 1 : start - 1 + n].gather(-1, targets[:, None])[:, 0]
        ratio_T, adv = torch.exp(lp_T - old_BT[i, :n]), float(advantages_B[i])
        objective_T = torch.minimum(ratio_T * adv, ratio_T.clamp(1 - eps_low, 1 + eps_high) * adv)
        if adv < 0:
            objective_T = torch.maximum(objective_T, torch.full_like(objective_T, c * adv))
        (-objective_T.sum() / num_tokens).backward()
    reference_NP = pixel_values.grad

    fracs = {k: totals[k] for k in ("clip_frac_low", "clip_frac_high", "clip_frac_dual")}
    rel = _relative(ours_NP, reference_NP)
    print(f"clip fractions {fracs}, ratio mean {totals['ratio_mean']:.2f}, relative {rel:.1e}")
    assert all(v > 0 for v in fracs.values()), fracs
    assert reference_NP.abs().sum() > 0 and rel <= 1e-5


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["shared-prefix", "padded"])
def test_a_token_budget_packs_passes_and_leaves_the_gradient_as_it_was(
    tiny_model_path, shared_prefix
):
    """Completions of 1 to 24 tokens: micro-batches under a budget of 160 padded tokens hold
    sequences of like length, never exceed it, and give the one-pass gradient. The padded
    forward's pass costs sequences x longest prompt + completion; the shared-prefix forward's
    its distinct prompts once (prompts x longest prompt + sequences x longest completion), so
    a prompt's sequences share passes."""
    import dataclasses

    import torch

    from learner.bench.cli import synthetic_groups
    from learner.learner import Batch

    one = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 64, init="noise", micro_batch_size=64,
        shared_prefix=shared_prefix,
    ))  # fmt: skip
    groups = synthetic_groups(one, prompts=3, group=6, tokens=24, seed=1)
    gen = torch.Generator().manual_seed(0)
    groups = [
        dataclasses.replace(
            g,
            completions=tuple(
                dataclasses.replace(c, token_ids=c.token_ids[:n], logprobs=c.logprobs[:n])
                for c, n in zip(
                    g.completions, torch.randint(1, 25, (6,), generator=gen).tolist(), strict=True
                )
            ),
        )
        for g in groups
    ]
    budget = 160
    packed = Learner(LearnerSettings(
        tiny_model_path, "tiny", 64, 64, init="noise", micro_batch_size=64,
        max_tokens_per_micro_batch=budget, shared_prefix=shared_prefix,
    ))  # fmt: skip
    batch = Batch.from_groups(groups)
    passes = packed.micro_batches(batch, range(len(batch)))
    prompt, completion = batch.prompt_ids, batch.lengths

    def cost(p):
        if shared_prefix:
            prompts = {prompt[i] for i in p}
            longest = max(len(q) for q in prompts)
            return len(prompts) * longest + len(p) * max(completion[i] for i in p)
        return len(p) * max(len(prompt[i]) + completion[i] for i in p)

    assert sorted(i for p in passes for i in p) == list(range(len(batch)))
    assert len(passes) > 1
    assert all(cost(p) <= budget for p in passes if len(p) > 1)
    if shared_prefix:  # a prompt's sequences fill passes one after the other
        owners = [batch.prompt_ids[i] for p in passes for i in p]
        assert sum(a != b for a, b in zip(owners, owners[1:], strict=False)) == len(groups) - 1
    reference = optimized_gradient(one, groups)
    # float32 rounding: the shared-prefix passes group (and left-pad) prompts differently, so
    # the linear attention's 64-token chunks fall elsewhere
    assert _relative(optimized_gradient(packed, groups), reference) <= (
        1e-5 if shared_prefix else 1e-6
    )
    assert sorted(one.micro_batches(batch, range(len(batch)))[0]) == list(range(len(batch)))
