"""DAPO (Yu et al. 2025, arXiv 2503.14476), as pure functions over tensors. Its loss is
`algo.loss=dapo` among the other objectives of `learner/objectives/`; the group advantages,
dynamic sampling and overlong shaping here serve every policy-gradient objective.

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

from learner.objectives.advantages import grpo_advantages
from learner.objectives.policy_gradient import clipped_token_loss
from learner.objectives.registry import LossSettings

# The group advantages of item 1 (`algo.adv_estimator=grpo`, learner/objectives/advantages.py).
group_advantages = grpo_advantages


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
    """The DAPO surrogate loss (to minimize) and its clip statistics: `algo.loss=dapo` of
    `learner/objectives/policy_gradient.py` with its settings as arguments.

    With `clip_ratio_c` (verl's dual clip, > 1), tokens with A < 0 get
    max(min(rho * A, clip(rho) * A), c * A): no gradient once rho > c.

    `num_tokens` is the normalizer: the whole batch's completion-token count, which differs
    from `mask_BT.sum()` when a batch is split into micro-batches. Defaults to `mask_BT.sum()`.
    `weights_BT` (detached) multiplies each token's clipped objective: the rollout correction's
    importance weights (`learner/rollout_correction.py`), as verl applies them.
    """
    settings = LossSettings(eps_low, eps_high, clip_ratio_c, "token-mean", num_tokens)
    return clipped_token_loss(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT
    )


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
