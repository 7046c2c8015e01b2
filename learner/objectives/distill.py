"""Context distillation (`algo.loss=distill`): the KL between the teacher's and the student's
next-token distributions at every position of a completion, as pure functions.

The teacher is the frozen model given a text context and no image, the student the same model
given the image and not the context. At completion position t, with p_T and p_S their
distributions over the vocabulary (at the sampling temperature, vision tokens masked):
- forward, on completions the teacher sampled (Askell et al. 2021; Snell et al. 2022):
  KL_t(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v));
- reverse, on completions the student sampled with the current image (on-policy context
  distillation, arXiv 2602.12275; GKD's on-policy reverse KL):
  KL_t(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v)).
The loss aggregates KL_t over the minibatch's completion tokens (token-mean by default). Both
are exact over the whole vocabulary; the learner evaluates them chunk by chunk of positions
(`learner/supervised.py`), so at most one chunk x vocabulary pair of logits is alive. The
gradient flows through the student only; the sampling of the completions is not
differentiated (as in GKD and on-policy distillation).
"""

from __future__ import annotations

import torch

from learner.objectives.aggregation import aggregate

DIRECTIONS = ("forward", "reverse")


def token_kl(
    student_logits_NV: torch.Tensor, teacher_logits_NV: torch.Tensor, direction: str = "forward"
) -> torch.Tensor:
    """KL per position (N,) between the two distributions given by logits; tokens whose logit
    is -inf on either side (the masked vision tokens) have probability 0 and add nothing."""
    if direction not in DIRECTIONS:
        raise ValueError(f"distillation direction {direction!r}: use one of {DIRECTIONS}")
    finite_NV = torch.isfinite(student_logits_NV) & torch.isfinite(teacher_logits_NV)
    student_NV = torch.log_softmax(student_logits_NV, dim=-1)
    teacher_NV = torch.log_softmax(teacher_logits_NV, dim=-1)
    source_NV = teacher_NV if direction == "forward" else student_NV  # the expectation's
    other_NV = student_NV if direction == "forward" else teacher_NV
    p_NV = torch.exp(source_NV)  # 0 where -inf
    log_ratio_NV = (source_NV - other_NV).masked_fill(~finite_NV, 0.0)
    return (p_NV * log_ratio_NV).sum(dim=-1)


def distill_loss(
    kl_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    num_tokens: int | float | None = None,
    num_sequences: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The KL aggregated over the completion tokens (to minimize)."""
    mask_BT = mask_BT.to(kl_BT.dtype)
    loss = aggregate(-kl_BT, mask_BT, loss_agg_mode, num_tokens, num_sequences)
    tokens = max(float(mask_BT.sum().item() if num_tokens is None else num_tokens), 1.0)
    with torch.no_grad():
        kl = ((kl_BT * mask_BT).sum() / tokens).item()
    return loss, {"kl": kl}
