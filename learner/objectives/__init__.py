"""The objectives the pixels are trained with: pure loss functions over tensors, one module per
family (docs/objectives.md: each formula with these symbols, its source, when to choose it).

- `policy_gradient`: losses on sampled, rewarded completions (`algo.loss`): `dapo` (the
  default), `grpo`, `dr_grpo`, `gspo`, `cispo`; each registered by name in `registry`
  (`register_policy_loss`, verl's door), where a user's loss is added the same way;
- `aggregation`: how per-token terms become one loss (token-mean, seq-mean-token-mean, ...);
- `supervised`: `sft`, the log-likelihood of given completions (gold answers);
- `distill`: the KL between a teacher's and the student's next-token distributions.
The learner (`learner/learner.py`, `learner/supervised.py`) calls them; the DAPO-specific
data side (group advantages, dynamic sampling, overlong shaping) is in `learner/dapo.py`.
"""

from learner.objectives.aggregation import AGG_MODES, aggregate
from learner.objectives.registry import (
    POLICY_LOSSES,
    LossSettings,
    PolicyLossSpec,
    get_policy_loss,
    register_policy_loss,
)

# Objectives that are not policy-gradient losses: their own update (learner/supervised.py).
TARGET_OBJECTIVES = ("sft", "distill")

__all__ = [
    "AGG_MODES",
    "POLICY_LOSSES",
    "TARGET_OBJECTIVES",
    "LossSettings",
    "PolicyLossSpec",
    "aggregate",
    "get_policy_loss",
    "register_policy_loss",
]
