"""Policy-gradient algorithms on sampled, scored groups: DAPO (the default), GRPO, Dr. GRPO,
GSPO, CISPO, or a user's loss (`algo.loss`, learner/objectives/registry.py) with an advantage
estimator (`algo.adv_estimator`, learner/objectives/advantages.py). A step samples G
completions per prompt, scores them and keeps the informative groups (dynamic sampling)."""

from __future__ import annotations

from typing import Any

from omegaconf import open_dict

from learner.driver.algorithms.base import Algorithm
from learner.driver.rollouts import StepRollouts, compute_rollouts
from learner.objectives import get_adv_estimator, get_policy_loss
from shared.tasks.entrypoints import absolute_entry


class PolicyGradient(Algorithm):
    name = "policy_gradient"

    @property
    def objective(self) -> str:
        """The loss itself (learner/objectives/registry.py), a user's file by its absolute
        path: the learner actor may start in another folder."""
        return absolute_entry(self.cfg.algo.loss)

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        spec = get_policy_loss(cfg.algo.loss)  # a user's loss is imported and checked here
        get_adv_estimator(cfg.algo.adv_estimator)
        return [
            *super().rules(cfg),
            (
                spec.dual_clip or cfg.algo.clip_ratio_c is None,
                f"algo.loss={cfg.algo.loss} caps its importance weight at 1 + eps_high itself, "
                "the dual clip does not apply: set algo.clip_ratio_c=null (algo=cispo does)",
            ),
        ]

    def resolve(self, cfg: Any, max_new_tokens: int) -> None:
        """The loss's own `loss_agg_mode` and `norm_adv_by_std` where null; for
        seq-mean-token-sum-norm its constant, the completion-length limit (Dr. GRPO's and
        TRL's max_completion_length) unless `algo.loss_scale_factor` is given."""
        algo, spec = cfg.algo, get_policy_loss(cfg.algo.loss)
        with open_dict(cfg):
            if algo.loss_agg_mode is None:
                algo.loss_agg_mode = spec.loss_agg_mode
            if algo.norm_adv_by_std is None:
                algo.norm_adv_by_std = spec.norm_adv_by_std
            if algo.loss_agg_mode == "seq-mean-token-sum-norm" and algo.loss_scale_factor is None:
                algo.loss_scale_factor = int(max_new_tokens)

    def batch(self, run: Any, step: int) -> StepRollouts:
        """Sample, score, filter (learner/driver/rollouts.py)."""
        scorer = run.scorer or run.task
        return compute_rollouts(run.cfg, run.pool, scorer, run.sampler, run.prompt_for, step)
