"""How a per-token objective becomes one number: the aggregation modes of verl's `agg_loss`
(`actor.loss_agg_mode`) and TRL's `loss_type`, as one pure function.

The counts are those of the whole minibatch (every micro-batch, every learner replica), so that
micro-batches and replicas sum to the one-pass loss:
- `token-mean` (DAPO, TRL `dapo`/`cispo`): sum over every completion token / the minibatch's
  completion tokens `num_tokens`;
- `seq-mean-token-mean` (GRPO, TRL `grpo`, GSPO): each completion's token mean, summed, / the
  minibatch's completions `num_sequences`;
- `seq-mean-token-sum`: each completion's token sum, summed, / `num_sequences`;
- `seq-mean-token-sum-norm` (Dr. GRPO, TRL `dr_grpo`): every token's term summed /
  (`num_sequences` x `horizon`), the horizon a constant: the completion-length limit.
"""

from __future__ import annotations

import torch

from shared.config import AGG_MODES  # the config field's values, defined once


def aggregate(
    objective_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: str = "token-mean",
    num_tokens: int | float | None = None,
    num_sequences: int | float | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """The loss to minimize: minus the aggregate of `objective_BT` (to maximize) over the real
    tokens of `mask_BT` (float, 1 = real). Counts default to this call's own."""
    match mode:
        case "token-mean":
            if num_tokens is None:
                num_tokens = mask_BT.sum().item()
            return -(objective_BT * mask_BT).sum() / max(float(num_tokens), 1.0)
        case "seq-mean-token-mean" | "seq-mean-token-sum" | "seq-mean-token-sum-norm":
            lengths_B = mask_BT.sum(dim=1)
            if num_sequences is None:
                num_sequences = (lengths_B > 0).sum().item()
            sums_B = (objective_BT * mask_BT).sum(dim=1)
            if mode == "seq-mean-token-mean":
                sums_B = sums_B / lengths_B.clamp(min=1.0)
            denominator = max(float(num_sequences), 1.0)
            if mode == "seq-mean-token-sum-norm":
                if horizon is None or horizon < 1:
                    raise ValueError(
                        "seq-mean-token-sum-norm needs the horizon (the completion-length limit)"
                    )
                denominator *= horizon
            return -sums_B.sum() / denominator
        case _:
            raise ValueError(f"unknown loss aggregation {mode!r}; use one of {AGG_MODES}")
