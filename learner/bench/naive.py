"""The naive learner computation the optimized one is measured and tested against.

It is what a straightforward implementation does: the model's full forward with logits over
every position of every sequence (prompt and image tokens included) and a log-softmax over the
whole batch x sequence x vocabulary tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from learner.dapo import dapo_loss, group_advantages
from learner.learner import Batch
from learner.policy import EncodedImage, FrozenPolicy


def full_logits_logprobs(
    policy: FrozenPolicy,
    image: EncodedImage,
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs (B, T), mask (B, T)) from logits over every position (the naive way)."""
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
    batch, max_len = len(seqs), max(len(s) for s in seqs)
    max_completion = max(len(c) for c in completions)
    input_ids_BL = torch.full((batch, max_len), policy.pad_token_id, dtype=torch.long)
    attention_BL = torch.zeros((batch, max_len), dtype=torch.long)
    for i, seq in enumerate(seqs):
        input_ids_BL[i, : len(seq)] = torch.tensor(seq)
        attention_BL[i, : len(seq)] = 1
    input_ids_BL, attention_BL = input_ids_BL.to(policy.device), attention_BL.to(policy.device)
    encoder_out = BaseModelOutputWithPooling(pooler_output=(image.features_ND,) * batch)
    out = policy.model(
        input_ids=input_ids_BL,
        attention_mask=attention_BL,
        image_grid_thw=image.grid_thw.expand(batch, -1),
        mm_token_type_ids=(input_ids_BL == policy.image_token_id).int(),
        mm_encoder_outputs={"image": encoder_out},
        use_cache=False,
    )
    suppress_V = torch.zeros(out.logits.shape[-1], dtype=torch.bool, device=policy.device)
    suppress_V[policy.suppress_ids] = True
    logits_BLV = out.logits.float() / policy.temperature
    logp_BLV = torch.log_softmax(logits_BLV.masked_fill(suppress_V, float("-inf")), dim=-1)
    rows = []
    for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
        start, n = len(p) - 1, len(c)
        targets_T = input_ids_BL[i, len(p) : len(p) + n]
        lp_T = logp_BLV[i, start : start + n].gather(-1, targets_T.unsqueeze(-1)).squeeze(-1)
        rows.append(torch.nn.functional.pad(lp_T, (0, max_completion - n)))
    mask_BT = torch.zeros((batch, max_completion), device=policy.device)
    for i, c in enumerate(completions):
        mask_BT[i, : len(c)] = 1.0
    return torch.stack(rows), mask_BT


def naive_gradient(learner, groups) -> torch.Tensor:
    """The pixel gradient of one DAPO step over the whole batch, computed naively: a separate
    no-gradient pass for old log-probs, one image encode per sequence, logits over every
    position, and every weight with `requires_grad=True` (so backward also computes weight
    gradients). Leaves the learner as it was; returns d loss / d theta (3, H, W)."""

    policy = learner.policy
    batch = Batch.from_groups(groups)
    advantages_B = group_advantages(batch.rewards_GN).reshape(-1)
    num_tokens = sum(batch.lengths)
    with torch.no_grad():
        old = [
            full_logits_logprobs(policy, policy.encode_image(learner.image()), [p], [c])[0]
            for p, c in zip(batch.prompt_ids, batch.token_ids, strict=True)
        ]
    weights = list(learner.model.parameters())
    for w in weights:
        w.requires_grad_(True)
    try:
        learner.image.theta_CHW.grad = None
        for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.token_ids, strict=True)):
            encoded = policy.encode_image(learner.image())  # once per sequence
            logprobs_1T, mask_1T = full_logits_logprobs(policy, encoded, [p], [c])
            loss, _ = dapo_loss(
                logprobs_1T,
                old[i],
                advantages_B[i : i + 1].to(logprobs_1T.device),
                mask_1T,
                learner.settings.eps_low,
                learner.settings.eps_high,
                num_tokens=num_tokens,
                clip_ratio_c=learner.settings.clip_ratio_c,
            )
            loss.backward()
        return learner.image.theta_CHW.grad.detach().clone()
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
        learner.image.theta_CHW.grad = None


def optimized_gradient(learner, groups) -> torch.Tensor:
    """The same gradient through the learner's own path (one minibatch, fresh completions:
    the forward doubles as the old log-probs). Leaves the learner as it was."""

    batch = Batch.from_groups(groups)
    advantages_B = group_advantages(batch.rewards_GN).reshape(-1)
    rows = list(range(len(batch)))
    old_BT = torch.zeros(len(batch), batch.max_len, device=learner.policy.device)
    learner.image.theta_CHW.grad = None
    learner.accumulate_gradient(batch, rows, old_BT, advantages_B, fill_old=set(rows))
    grad = learner.image.theta_CHW.grad.detach().clone()
    learner.image.theta_CHW.grad = None
    return grad
