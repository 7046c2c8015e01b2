"""The objectives the pixels are trained with: pure loss functions over tensors, one module per
family (docs/objectives.md: each formula with these symbols, its source, when to choose it).

- `policy_gradient`: losses on sampled, rewarded completions (`algo.loss`): `dapo` (the
  default), `grpo`, `dr_grpo`, `gspo`, `cispo`; each registered by name in `registry`
  (`register_policy_loss`, verl's door), where a user's loss is added the same way;
- `aggregation`: how per-token terms become one loss (token-mean, seq-mean-token-mean, ...);
- `advantages`: advantage estimators by name (`algo.adv_estimator`: grpo, rloo, or a user's
  by import path; `register_adv_est`, verl's door);
- `supervised`: `sft`, the log-likelihood of given completions (gold answers);
- `distill`: the KL between a teacher's and the student's next-token distributions.
The learner's updates (`learner/policy_gradient_update.py`, `learner/supervised.py`) call them;
the DAPO-specific data side (dynamic sampling, overlong shaping) is in `learner/dapo.py`.
"""

from learner.objectives import policy_gradient  # noqa: F401  (the built-in losses register)
from learner.objectives.advantages import (
    ADV_ESTIMATORS,
    get_adv_estimator,
    register_adv_est,
)
from learner.objectives.aggregation import AGG_MODES, aggregate
from learner.objectives.registry import (
    POLICY_LOSSES,
    LossSettings,
    PolicyLossSpec,
    get_policy_loss,
    register_policy_loss,
)

__all__ = [
    "ADV_ESTIMATORS",
    "AGG_MODES",
    "POLICY_LOSSES",
    "LossSettings",
    "PolicyLossSpec",
    "aggregate",
    "get_adv_estimator",
    "get_policy_loss",
    "register_adv_est",
    "register_policy_loss",
]
