"""Supervised fine-tuning (`algo.loss=sft`): the log-likelihood of given completions (the
task's gold completions) given the image and the prompt, as a pure function.

    loss = -(sum over the minibatch's target tokens of log pi(y_t | image, prompt, y_<t))
           / (the minibatch's target tokens)

(token-level normalization, `token-mean`; another `algo.loss_agg_mode` aggregates the same
log-likelihoods its way). `logprobs_BT` are computed at the sampling temperature with the vision
tokens masked, as every log-prob of the learner (`algo.temperature`, 1 by default).
"""

from __future__ import annotations

import torch

from learner.objectives.aggregation import aggregate


def sft_loss(
    logprobs_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    num_tokens: int | float | None = None,
    num_sequences: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative log-likelihood (to minimize) and its per-token mean (a fraction of the
    minibatch's target tokens: the learner sums it over micro-batches)."""
    mask_BT = mask_BT.to(logprobs_BT.dtype)
    loss = aggregate(logprobs_BT, mask_BT, loss_agg_mode, num_tokens, num_sequences)
    tokens = max(float(mask_BT.sum().item() if num_tokens is None else num_tokens), 1.0)
    with torch.no_grad():
        nll = (-(logprobs_BT * mask_BT).sum() / tokens).item()
    return loss, {"nll_per_token": nll}
