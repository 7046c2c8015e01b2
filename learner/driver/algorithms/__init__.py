"""The algorithms, one class each (`ALGORITHM_CLASSES`), chosen by `algo.loss`: a registered
name (sft, distill, opd), the import path of an `Algorithm` subclass of your own
(`package.module:Class`, or `path/to/file.py:Class`), or else a policy-gradient loss (dapo,
grpo, ..., or a loss function by import path) run by `PolicyGradient`. Adding an algorithm is
one module here, one line below and a preset in conf/algo/ (docs/design.md, "Adding ...").
"""

from __future__ import annotations

from typing import Any

from learner.driver.algorithms.base import Algorithm
from learner.driver.algorithms.distill import ContextDistillation
from learner.driver.algorithms.opd import OnPolicyDistillation
from learner.driver.algorithms.policy_gradient import PolicyGradient
from learner.driver.algorithms.sft import SupervisedFineTuning
from shared.config import validate
from shared.errors import UserError
from shared.tasks.entrypoints import load_entry

ALGORITHM_CLASSES: dict[str, type[Algorithm]] = {
    "sft": SupervisedFineTuning,
    "distill": ContextDistillation,
    "opd": OnPolicyDistillation,
}


def algorithm_class(loss: str) -> type[Algorithm]:
    if loss in ALGORITHM_CLASSES:
        return ALGORITHM_CLASSES[loss]
    if ":" in loss:  # an Algorithm subclass of a user's, or a policy loss function
        try:
            found = load_entry(loss, "algo.loss")
        except UserError:  # the loss registry says what is wrong with it (PolicyGradient)
            return PolicyGradient
        if isinstance(found, type) and issubclass(found, Algorithm):
            return found
    return PolicyGradient


def algorithm_for(cfg: Any) -> Algorithm:
    """The run's algorithm (`algo.loss`)."""
    return algorithm_class(cfg.algo.loss)(cfg)


def check_config(cfg: Any) -> Algorithm:
    """Every rule of the config, its sections' and the algorithm's, in one error; returns the
    algorithm."""
    algorithm = algorithm_for(cfg)
    validate(cfg, algorithm.rules(cfg))
    return algorithm


__all__ = [
    "ALGORITHM_CLASSES",
    "Algorithm",
    "ContextDistillation",
    "OnPolicyDistillation",
    "PolicyGradient",
    "SupervisedFineTuning",
    "algorithm_for",
    "check_config",
]
