"""Policy-gradient losses on sampled completions, pure functions over tensors, each registered
under its `algo.loss` name. Symbols (docs/objectives.md has the formulas and sources):
`logprobs_BT` log pi_theta of each sampled token, `old_logprobs_BT` log pi_old (the policy the
completion was sampled with, as the learner computes it), `advantages_B` one advantage per
completion, `mask_BT` 1 on real completion tokens, `weights_BT` the rollout correction's
truncated importance weights (detached; None: off).

- `dapo` (DAPO, the default): per-token ratio rho = pi / pi_old, clip-higher
  min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), verl's dual clip for A < 0, token-mean.
- `grpo` (GRPO as TRL's `loss_type="grpo"` and verl's default aggregation): the same per-token
  objective, each completion's token mean averaged over completions (seq-mean-token-mean).
- `dr_grpo` (Dr. GRPO): the same objective summed over tokens / (completions x the completion-
  length limit), and advantages not divided by the group's std.
- `gspo` (GSPO): one ratio per completion, s = exp(mean_t log(pi / pi_old)), clipped (the
  paper's eps 3e-4 / 4e-4), seq-mean-token-mean.
- `cispo` (CISPO, MiniMax-M1): the ratio capped at 1 + eps_high and detached, times A times
  log pi: every token keeps a gradient, clipped ones a bounded one; token-mean.
Each returns (loss to minimize, metrics): the fraction of the minibatch's completion tokens
clipped low, high and by the dual clip, and the mean ratio (sums over micro-batches).
"""

from __future__ import annotations

import torch

from learner.objectives.aggregation import aggregate
from learner.objectives.registry import LossSettings, register_policy_loss

# The log-ratio is clamped to +-20 as verl does: one overflowing token must not make the
# minibatch's gradient NaN (the clipped objective is flat there anyway).
LOG_RATIO_CLAMP = 20.0


def clipped_objective(
    ratio_BT: torch.Tensor,
    adv_B1: torch.Tensor,
    eps_low: float,
    eps_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with clip-higher, min(rho A, clip(rho, 1 - eps_low,
    1 + eps_high) A), and with `clip_ratio_c` verl's dual clip for A < 0: max(that, c A).
    Returns the objective (B, T) and where the dual clip is active (B, T)."""
    unclipped_BT = ratio_BT * adv_B1
    clipped_BT = torch.clamp(ratio_BT, 1.0 - eps_low, 1.0 + eps_high) * adv_B1
    objective_BT = torch.minimum(unclipped_BT, clipped_BT)
    dual_BT = torch.zeros_like(objective_BT, dtype=torch.bool)
    if clip_ratio_c is not None:
        floor_BT = clip_ratio_c * adv_B1.expand_as(objective_BT)
        dual_BT = (adv_B1 < 0) & (objective_BT < floor_BT)
        objective_BT = torch.where(dual_BT, floor_BT, objective_BT)
    return objective_BT, dual_BT


def _clip_metrics(
    ratio_BT, adv_B1, mask_BT, dual_BT, eps_low, eps_high, num_tokens
) -> dict[str, float]:
    """A token is clipped when the clipped branch is the active (smaller) one."""
    with torch.no_grad():
        low_BT = (ratio_BT < 1.0 - eps_low) & (adv_B1 < 0)
        high_BT = (ratio_BT > 1.0 + eps_high) & (adv_B1 > 0)
        return {
            "clip_frac_low": ((low_BT * mask_BT).sum() / num_tokens).item(),
            "clip_frac_high": ((high_BT * mask_BT).sum() / num_tokens).item(),
            "clip_frac_dual": ((dual_BT * mask_BT).sum() / num_tokens).item(),
            "ratio_mean": ((ratio_BT * mask_BT).sum() / num_tokens).item(),
        }


def _token_count(mask_BT: torch.Tensor, settings: LossSettings) -> float:
    num_tokens = settings.num_tokens
    if num_tokens is None:
        num_tokens = mask_BT.sum().item()
    return max(float(num_tokens), 1.0)


def clipped_token_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    settings: LossSettings,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-token clipped surrogate of PPO/GRPO/DAPO/Dr. GRPO, aggregated by
    `settings.loss_agg_mode`; the rollout correction's weights multiply each token's term."""
    mask_BT = mask_BT.to(logprobs_BT.dtype)
    log_ratio_BT = (logprobs_BT - old_logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return _clipped_surrogate(torch.exp(log_ratio_BT), advantages_B, mask_BT, settings, weights_BT)


def _clipped_surrogate(
    ratio_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    settings: LossSettings,
    weights_BT: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate of `ratio_BT` (per token or per sequence), weighted, aggregated,
    with its clip metrics."""
    num_tokens = _token_count(mask_BT, settings)
    adv_B1 = advantages_B.unsqueeze(1)
    objective_BT, dual_BT = clipped_objective(
        ratio_BT, adv_B1, settings.eps_low, settings.eps_high, settings.clip_ratio_c
    )
    if weights_BT is not None:
        objective_BT = objective_BT * weights_BT.detach()
    loss = aggregate(
        objective_BT,
        mask_BT,
        settings.loss_agg_mode,
        num_tokens,
        settings.num_sequences,
        settings.horizon,
    )
    metrics = _clip_metrics(
        ratio_BT, adv_B1, mask_BT, dual_BT, settings.eps_low, settings.eps_high, num_tokens
    )
    return loss, metrics


@register_policy_loss("dapo", loss_agg_mode="token-mean")
def dapo(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT=None):
    """DAPO (Yu et al. 2025): clip-higher, token-level normalization."""
    return clipped_token_loss(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT
    )


@register_policy_loss("grpo", loss_agg_mode="seq-mean-token-mean")
def grpo(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT=None):
    """GRPO (Shao et al. 2024, DeepSeekMath) as TRL's `loss_type="grpo"`: each completion's
    token mean, then the mean over completions (KL coefficient 0, TRL's default)."""
    return clipped_token_loss(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT
    )


@register_policy_loss("dr_grpo", loss_agg_mode="seq-mean-token-sum-norm", norm_adv_by_std=False)
def dr_grpo(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT=None):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): no length
    normalization (token sums / a constant) and no std normalization of the advantages."""
    return clipped_token_loss(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, settings, weights_BT
    )


@register_policy_loss("gspo", loss_agg_mode="seq-mean-token-mean")
def gspo(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    settings: LossSettings,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the sequence-level ratio
    s_i = exp(mean_t (log pi - log pi_old)) in the clipped surrogate. Written per token as verl's
    GSPO-token: s_it = sg(s_i) pi_t / sg(pi_t), whose value is s_i at every token of completion
    i and whose gradient is s_i grad log pi_t; with seq-mean-token-mean aggregation the gradient
    is exactly GSPO's, s_i A_i mean_t grad log pi_t (clipped where s_i leaves the range)."""
    mask_BT = mask_BT.to(logprobs_BT.dtype)
    lengths_B = mask_BT.sum(dim=1).clamp(min=1.0)
    log_seq_ratio_B = ((logprobs_BT - old_logprobs_BT) * mask_BT).sum(dim=1) / lengths_B
    log_ratio_BT = logprobs_BT - logprobs_BT.detach() + log_seq_ratio_B.detach().unsqueeze(1)
    ratio_BT = torch.exp(log_ratio_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return _clipped_surrogate(ratio_BT, advantages_B, mask_BT, settings, weights_BT)


@register_policy_loss("cispo", loss_agg_mode="token-mean", dual_clip=False)
def cispo(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    settings: LossSettings,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585; TRL `loss_type="cispo"`): the objective
    sg(min(rho, 1 + eps_high)) A log pi per token. The importance weight is capped and
    detached instead of clipping the objective, so no token loses its gradient; the cap is
    TRL's epsilon_high (= 1 + eps_high, 5.0 in ScaleRL). There is no lower cap (MiniMax-M1
    sets none) and no dual clip (the weight is already bounded)."""
    mask_BT = mask_BT.to(logprobs_BT.dtype)
    num_tokens = _token_count(mask_BT, settings)
    log_ratio_BT = (logprobs_BT - old_logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio_BT = torch.exp(log_ratio_BT)
    weight_BT = ratio_BT.clamp(max=1.0 + settings.eps_high).detach()
    adv_B1 = advantages_B.unsqueeze(1)
    objective_BT = weight_BT * adv_B1 * logprobs_BT
    if weights_BT is not None:
        objective_BT = objective_BT * weights_BT.detach()
    loss = aggregate(
        objective_BT,
        mask_BT,
        settings.loss_agg_mode,
        num_tokens,
        settings.num_sequences,
        settings.horizon,
    )
    with torch.no_grad():
        capped_BT = ratio_BT > 1.0 + settings.eps_high
        metrics = {
            "clip_frac_low": 0.0,
            "clip_frac_high": ((capped_BT * mask_BT).sum() / num_tokens).item(),
            "clip_frac_dual": 0.0,
            "ratio_mean": ((ratio_BT * mask_BT).sum() / num_tokens).item(),
        }
    return loss, metrics
