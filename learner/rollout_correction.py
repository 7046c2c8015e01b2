"""Rollout correction: the rollout engine samples from a slightly different distribution than
the learner computes (vLLM's bfloat16 kernels, Qwen3.5's linear-attention kernels: vllm#47425,
transformers#46190), so the completions are off-policy by that much. Truncated importance
sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training"; verl's `rollout_correction`, slime, SkyRL, OpenRLHF, prime-rl) re-weights each
token's policy-gradient term by w = min(pi_old / pi_rollout, cap), with pi_old the learner's
log-probs of the policy the completion was sampled with and pi_rollout the engine's. Pure
functions over tensors.

Modes: "off"; "token" (w per token, verl's `rollout_is=token`); "sequence" (one w per
completion: the product of its token ratios, capped).
"""

from __future__ import annotations

import torch

MODES = ("off", "token", "sequence")


def correction_weights(
    old_BT: torch.Tensor,
    rollout_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: str = "token",
    cap: float = 2.0,
) -> torch.Tensor | None:
    """(B, T) importance weights, detached (None with mode="off"); zero where masked."""
    if mode == "off":
        return None
    log_ratio_BT = (old_BT - rollout_BT).detach() * mask_BT
    if mode == "token":
        weights_BT = torch.exp(log_ratio_BT).clamp(max=cap)
    elif mode == "sequence":
        weights_B1 = torch.exp(log_ratio_BT.sum(dim=1, keepdim=True)).clamp(max=cap)
        weights_BT = weights_B1.expand_as(log_ratio_BT)
    else:
        raise ValueError(f"rollout correction {mode!r}: use one of {MODES}")
    return weights_BT * mask_BT


def correction_metrics(
    old_BT: torch.Tensor, rollout_BT: torch.Tensor, mask_BT: torch.Tensor, cap: float = 2.0
) -> dict[str, float]:
    """verl's rollout-correction diagnostics, on the tokens sampled by the rollout engine:
    - `kl`: k1 estimate of KL(rollout || old), mean of log pi_rollout - log pi_old;
    - `k3_kl`: the k3 estimate, mean of r - 1 - log r with r = pi_old / pi_rollout;
    - `ppl_ratio`: mean over completions of ppl_old / ppl_rollout (ppl = exp(-mean log-prob));
    - `log_ppl_abs_diff`: mean over completions of |mean log pi_old - mean log pi_rollout|;
    - `chi2_token`: E[r^2] - 1 over tokens; `chi2_seq`: E[R^2] - 1 over completions, R the
      product of a completion's token ratios (the variance the weights would add);
    - `ess`: effective sample size of the token weights as a fraction, (sum r)^2 / (n sum r^2);
    - `capped_frac`: the fraction of tokens whose ratio exceeds the cap."""
    mask_BT = mask_BT.to(old_BT.dtype)
    n_tokens = mask_BT.sum().clamp(min=1.0)
    lengths_B = mask_BT.sum(dim=1).clamp(min=1.0)
    log_ratio_BT = (old_BT - rollout_BT) * mask_BT
    ratio_BT = torch.exp(log_ratio_BT) * mask_BT
    mean_old_B = (old_BT * mask_BT).sum(1) / lengths_B
    mean_rollout_B = (rollout_BT * mask_BT).sum(1) / lengths_B
    seq_ratio_B = torch.exp(log_ratio_BT.sum(1))
    return {
        "kl": float((-log_ratio_BT).sum() / n_tokens),
        "k3_kl": float(((ratio_BT - 1 - log_ratio_BT) * mask_BT).sum() / n_tokens),
        "ppl_ratio": float(torch.exp(mean_rollout_B - mean_old_B).mean()),
        "log_ppl_abs_diff": float((mean_old_B - mean_rollout_B).abs().mean()),
        "chi2_token": float((ratio_BT**2).sum() / n_tokens - 1),
        "chi2_seq": float((seq_ratio_B**2).mean() - 1),
        "ess": float(ratio_BT.sum() ** 2 / (n_tokens * (ratio_BT**2).sum())),
        "capped_frac": float(((ratio_BT > cap) & (mask_BT > 0)).sum() / n_tokens),
    }
