"""Advantage estimators: one door, as verl's `@register_adv_est` (`algo.adv_estimator`).

An estimator maps a step's rewards, one row per group of G completions of one prompt, to one
advantage per completion:

    from learner.objectives import register_adv_est

    @register_adv_est("my_estimator")
    def my_estimator(rewards_GN, norm_by_std):
        return rewards_GN - rewards_GN.median(dim=1, keepdim=True).values

- `grpo` (the default): (r - group mean) / (group std + 1e-6), the std unbiased (n - 1), as
  verl's `compute_grpo_outcome_advantage` and TRL; `norm_by_std=False` (Dr. GRPO,
  `algo.norm_adv_by_std=false`): r - group mean;
- `rloo` (REINFORCE leave-one-out, Ahmadian et al. 2024; verl's `rloo`): r_i minus the mean
  of the other G - 1 rewards of its group, i.e. G / (G - 1) * (r_i - group mean); never
  divided by a std (`norm_by_std` is ignored, as verl ignores it); a group of one has no
  baseline and keeps its reward, as in verl.
A user's estimator is `algo.adv_estimator=package.module:function` (or `path/to/file.py:fn`),
imported and its signature checked when the run starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from shared.errors import UserError
from shared.tasks.entrypoints import load_entry

# rewards_GN (groups, G), norm_by_std -> advantages_GN (groups, G)
AdvantageEstimator = Callable[[torch.Tensor, bool], torch.Tensor]
PARAMETERS = ("rewards_GN", "norm_by_std")
ADV_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_adv_est(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register `fn` as `algo.adv_estimator=<name>` (a later registration replaces it)."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        check_signature(fn, name)
        ADV_ESTIMATORS[name] = fn
        return fn

    return decorator


def check_signature(fn, name: str) -> None:
    try:
        inspect.signature(fn).bind(*PARAMETERS)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"algo.adv_estimator={name!r} ({getattr(fn, '__qualname__', fn)}) must take "
            f"({', '.join(PARAMETERS)}) like learner/objectives/advantages.py's: {err}"
        ) from err


def get_adv_estimator(name: str) -> AdvantageEstimator:
    """A registered estimator, or an import path (imported, checked, registered)."""
    if name in ADV_ESTIMATORS:
        return ADV_ESTIMATORS[name]
    if ":" not in name:
        raise UserError(
            f"algo.adv_estimator={name!r}: no such estimator; use one of "
            f"{', '.join(sorted(ADV_ESTIMATORS))}, or a package.module:function of your own "
            "(learner/objectives/advantages.py)"
        )
    fn = load_entry(name, "algo.adv_estimator")
    check_signature(fn, name)
    ADV_ESTIMATORS[name] = fn
    return fn


@register_adv_est("grpo")
def grpo_advantages(
    rewards_GN: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(groups, G) rewards -> (groups, G) advantages: minus the group mean, divided by the
    group's unbiased (n - 1) std unless `norm_by_std` is false."""
    mean_G1 = rewards_GN.mean(dim=1, keepdim=True)
    if not norm_by_std:
        return rewards_GN - mean_G1
    std_G1 = rewards_GN.std(dim=1, keepdim=True, correction=1)
    return (rewards_GN - mean_G1) / (std_G1 + eps)


@register_adv_est("rloo")
def rloo_advantages(rewards_GN: torch.Tensor, norm_by_std: bool = False) -> torch.Tensor:
    """(groups, G) rewards -> (groups, G) advantages: each reward minus the mean of the rest
    of its group (a group of one keeps its reward)."""
    n = rewards_GN.shape[1]
    if n < 2:
        return rewards_GN.clone()
    others_GN = (rewards_GN.sum(dim=1, keepdim=True) - rewards_GN) / (n - 1)
    return rewards_GN - others_GN
