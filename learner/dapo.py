"""DAPO (Yu et al. 2025, arXiv 2503.14476), as pure functions over tensors.

1. Group-normalized advantages: A = (r - mean_group) / (std_group + 1e-6), one per completion,
   with the unbiased (n - 1) standard deviation, as verl and TRL compute it.
2. Clip-higher: per token min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A). Optionally
   verl's dual clip for negative advantages (`clip_ratio_c`, Ye et al. 2020): the objective
   is bounded below by c * A, so a huge ratio on a stale sample cannot dominate the batch.
3. Token-level aggregation: sum over every completion token in the batch divided by the
   batch's total completion-token count (long completions are not down-weighted per sample).
4. No KL term.
5. Dynamic sampling: groups whose strict accuracies are all equal (all right or all wrong)
   are dropped, as DAPO and verl's `filter_groups.metric=acc` do: with shaped rewards, tiny
   reward differences inside an all-wrong group must not become full-size advantages. The
   driver samples more prompts, up to a cap on extra generation rounds. (`metric="reward"`
   keeps a group whose reward std reaches a minimum instead.)
6. Overlong reward shaping: a linear penalty inside a buffer before the length limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_advantages(rewards_GN: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(groups, G) rewards -> (groups, G) advantages, normalized by the unbiased (n - 1)
    standard deviation of each group (verl's `compute_grpo_outcome_advantage`, TRL's GRPO)."""
    mean_G1 = rewards_GN.mean(dim=1, keepdim=True)
    std_G1 = rewards_GN.std(dim=1, keepdim=True, correction=1)
    return (rewards_GN - mean_G1) / (std_G1 + eps)


def dapo_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    num_tokens: int | float | None = None,
    clip_ratio_c: float | None = None,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DAPO surrogate loss (to minimize) and its clip statistics.

    With `clip_ratio_c` (verl's dual clip, > 1), tokens with A < 0 get
    max(min(rho * A, clip(rho) * A), c * A): no gradient once rho > c.

    `num_tokens` is the normalizer: the whole batch's completion-token count, which differs
    from `mask_BT.sum()` when a batch is split into micro-batches. Defaults to `mask_BT.sum()`.
    `weights_BT` (detached) multiplies each token's clipped objective: the rollout correction's
    importance weights (`learner/rollout_correction.py`), as verl applies them.
    """
    mask_BT = mask_BT.to(logprobs_BT.dtype)
    if num_tokens is None:
        num_tokens = mask_BT.sum().item()
    num_tokens = max(float(num_tokens), 1.0)
    # the log-ratio clamped to +-20 as verl does: one overflowing token must not make the
    # minibatch's gradient NaN (the clipped objective is flat there anyway)
    ratio_BT = torch.exp((logprobs_BT - old_logprobs_BT).clamp(-20.0, 20.0))
    adv_B1 = advantages_B.unsqueeze(1)
    unclipped_BT = ratio_BT * adv_B1
    clipped_BT = torch.clamp(ratio_BT, 1.0 - eps_low, 1.0 + eps_high) * adv_B1
    objective_BT = torch.minimum(unclipped_BT, clipped_BT)
    dual_BT = torch.zeros_like(objective_BT, dtype=torch.bool)
    if clip_ratio_c is not None:
        floor_BT = clip_ratio_c * adv_B1.expand_as(objective_BT)
        dual_BT = (adv_B1 < 0) & (objective_BT < floor_BT)
        objective_BT = torch.where(dual_BT, floor_BT, objective_BT)
    if weights_BT is not None:
        objective_BT = objective_BT * weights_BT.detach()
    loss = -(objective_BT * mask_BT).sum() / num_tokens

    with torch.no_grad():
        # A token is clipped when the clipped branch is the active (smaller) one.
        low_BT = (ratio_BT < 1.0 - eps_low) & (adv_B1 < 0)
        high_BT = (ratio_BT > 1.0 + eps_high) & (adv_B1 > 0)
        metrics = {
            "clip_frac_low": ((low_BT * mask_BT).sum() / num_tokens).item(),
            "clip_frac_high": ((high_BT * mask_BT).sum() / num_tokens).item(),
            "clip_frac_dual": ((dual_BT * mask_BT).sum() / num_tokens).item(),
            "ratio_mean": ((ratio_BT * mask_BT).sum() / num_tokens).item(),
        }
    return loss, metrics


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer, then -1 linearly to max."""
    if buffer <= 0:
        return 0.0
    return min(-(length - (max_length - buffer)) / buffer, 0.0)


def keep_informative_groups(
    accuracies: Sequence[Sequence[float]],
    rewards: Sequence[Sequence[float]] | None = None,
    metric: str = "acc",
    min_reward_std: float = 0.0,
) -> list[int]:
    """Indices of the groups dynamic sampling keeps.

    `metric="acc"`: the strict accuracies are not all equal (some right, some wrong).
    `metric="reward"`: the rewards' population std is above `min_reward_std`.
    `metric="none"`: every group (dynamic sampling off).
    """
    match metric:
        case "none":  # dynamic sampling off (plain GRPO): every group, signal or not
            return list(range(len(accuracies)))
        case "acc":
            return [i for i, group in enumerate(accuracies) if len(set(group)) > 1]
        case "reward":
            if rewards is None:
                raise ValueError("metric='reward' needs the rewards")
            return [i for i, group in enumerate(rewards) if _std(group) > min_reward_std]
        case _:
            raise ValueError(
                f"unknown dynamic-sampling metric {metric!r}; use 'acc', 'reward' or 'none'"
            )


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
