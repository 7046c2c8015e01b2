"""The policy-gradient update: a loss from `learner/objectives/` (DAPO by default) on scored
groups of sampled completions. A part of the `Learner` (`learner/learner.py`), kept here so
that the learner's core and each kind of update read on their own.

- `PolicyGradient`: the learner's side of every policy-gradient algorithm: the registered
  policy loss (`algo.loss`), its settings and the advantage estimator (`algo.adv_estimator`);
- `PolicyGradientSteps`: the update's steps on the Learner: old log-probs once per policy
  version, a minibatch's gradient through one vision encode, an optimizer step per minibatch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from learner.batches import Batch, mean_finite, mismatch_metrics
from learner.objectives import LossSettings, get_adv_estimator, get_policy_loss
from learner.rollout_correction import correction_metrics, correction_weights
from learner.settings import LearnerSettings
from shared.messages import Completion, ScoredGroup


class PolicyGradient:
    """The learner's side of a policy-gradient algorithm (Learner -> its `objective`)."""

    def __init__(self, settings: LearnerSettings):
        spec = get_policy_loss(settings.loss)
        self.name, self.policy_loss = settings.loss, spec.fn
        self.loss_agg_mode = settings.loss_agg_mode or spec.loss_agg_mode
        own_norm = spec.norm_adv_by_std
        self.norm_adv_by_std = (
            own_norm if settings.norm_adv_by_std is None else settings.norm_adv_by_std
        )
        self.estimator = get_adv_estimator(settings.adv_estimator)
        self.settings = settings

    def setup(self, learner) -> None:
        """Nothing beyond the Learner's own model."""

    def update(self, learner, groups: Sequence[ScoredGroup]):
        return learner.update_groups(groups)

    def advantages(self, rewards_GN: torch.Tensor) -> torch.Tensor:
        """(groups, G) rewards -> (groups, G) advantages (`algo.adv_estimator`)."""
        return self.estimator(rewards_GN, self.norm_adv_by_std)

    def loss_settings(self, num_tokens: int, num_sequences: int) -> LossSettings:
        s = self.settings
        return LossSettings(
            s.eps_low, s.eps_high, s.clip_ratio_c, self.loss_agg_mode, num_tokens,
            num_sequences, s.loss_scale_factor,
        )  # fmt: skip


class PolicyGradientSteps:
    """The policy-gradient update's methods of the `Learner` (a mixin: they use its model,
    trained tensors, optimizer, data parallelism and versions)."""

    @torch.no_grad()
    def compute_logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        """Per-token log-probs of each completion under the current image (no gradient)."""
        batch = Batch.from_completions(completions)
        batch.image_versions = [self.version] * len(batch)
        logprobs_BT = self.old_logprobs(batch, skip=set())
        return [row[:n].tolist() for row, n in zip(logprobs_BT, batch.lengths, strict=True)]

    @torch.no_grad()
    def old_logprobs(self, batch: Batch, skip: set[int]) -> torch.Tensor:
        """(B, T) log-probs of every sequence not in `skip` under the image it was sampled
        with: one encode and no-gradient pass per image version. Rows in `skip` stay zero
        (the first minibatch fills them from its own forward)."""
        old_BT = torch.zeros(len(batch), batch.max_len, device=self.policy.device)
        todo: dict[int, list[int]] = {}
        for i, version in enumerate(batch.image_versions):
            if i not in skip:
                todo.setdefault(version, []).append(i)
        for version, rows in sorted(todo.items()):
            with self.at_version(version):  # the image (ART) or the adapter (LoRA) of then
                encoded = self.encode(grad=False)
                for idx in self.micro_batches(batch, rows):
                    prompts = [batch.prompt_ids[i] for i in idx]
                    logprobs_BT, _ = self.policy.sequence_logprobs(
                        encoded, prompts, [batch.token_ids[i] for i in idx]
                    )
                    old_BT[idx, : logprobs_BT.shape[1]] = logprobs_BT
        return old_BT

    def update_groups(self, groups: Sequence[ScoredGroup]):
        """One learner step on a batch of scored groups; returns metrics and the new policy
        (the PNG, or the LoRA adapter)."""
        start, self.data_parallel.allreduce_s = time.perf_counter(), 0.0
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats()  # peak_memory_bytes: this update's
        batch = Batch.from_groups(groups)
        version = self.version
        before = [p.detach().clone() for p in self.trainable()]
        advantages_B = self.objective.advantages(batch.rewards_GN).reshape(-1)
        minibatches = self.minibatches(len(batch))
        # this replica's rows of each minibatch: all of them with one learner
        mine = [self.data_parallel.share(batch, indices) for indices in minibatches]
        # the first minibatch's forward doubles as its old log-probs, unless it is not the
        # old policy's own (LoRA dropout acts in that forward)
        reuse = (
            {i for i in mine[0] if batch.image_versions[i] == version}
            if self.trained.deterministic_forward
            else set()
        )
        others = set(range(len(batch))).difference(*mine)  # other replicas' rows
        old_BT = self.old_logprobs(batch, skip=reuse | others)
        stats = [
            self.minibatch_step(
                batch,
                rows,
                old_BT,
                advantages_B,
                reuse if k == 0 else set(),
                num_tokens=sum(batch.lengths[i] for i in minibatches[k]),
                num_sequences=len(minibatches[k]),
            )
            for k, rows in enumerate(mine)
        ]
        self.data_parallel.all_reduce_([old_BT])  # every row was computed by one replica
        metrics = mismatch_metrics(batch, old_BT, version)
        rollout_BT, mask_BT = batch.rollout_logprobs_BT(old_BT.device)
        cap = self.settings.rollout_correction_cap
        corrections = correction_metrics(old_BT, rollout_BT, mask_BT, cap)
        metrics.update({f"rollout_corr/{k}": v for k, v in corrections.items()})
        skipped = self.commit(version, before, stats)
        update = self.policy_update()
        taken = [s for s in stats if math.isfinite(s["loss"])] or stats
        metrics.update({k: float(np.mean([s[k] for s in taken])) for k in taken[0]})
        metrics.update({k: float(v) for k, v in self.trained.update_metrics(update).items()})
        metrics.update(
            {
                "skipped_updates": float(skipped),
                "consecutive_skips": float(self.consecutive_skips),
                # one no-gradient pass per image version among the rows not reused
                "old_logprob_passes": float(
                    len(
                        {
                            v
                            for i, v in enumerate(batch.image_versions)
                            if i not in reuse and i not in others
                        }
                    )
                ),
                # the mean over the minibatches' optimizer steps (skipped ones left out)
                "grad_norm": mean_finite([s["grad_norm"] for s in stats]),
                "num_sequences": float(len(batch)),
                "learner_time_s": time.perf_counter() - start,
            }
        )
        self.finish_update(metrics)
        return metrics, update

    def minibatch_step(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int],
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The minibatch's gradient, then one Adam step on the pixel logits. A NaN or inf in
        the loss or the gradient refuses the step: the gradient is dropped, the pixels and
        Adam's state stay as they were (`skipped` = 1). With replicas, `indices` is this
        replica's share and `num_tokens`, `num_sequences` the whole minibatch's."""
        totals = self.minibatch_gradient(
            batch, indices, old_BT, advantages_B, fill_old, num_tokens, num_sequences
        )
        return self.optimizer_step(totals)

    def minibatch_gradient(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int],
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The minibatch's gradient in the trained tensors' `.grad`, and its loss statistics:
        with replicas, both summed over them (the only all-reduce of a step)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = self.accumulate_gradient(
            batch, indices, old_BT, advantages_B, fill_old, num_tokens, num_sequences
        )
        return self.sum_over_replicas(totals)

    def batch_gradient(self, groups: Sequence[ScoredGroup]) -> list[torch.Tensor]:
        """The DAPO gradient of a batch of fresh completions as one minibatch (the update's
        first gradient; with replicas, all-reduced), without a step: CPU copies, in the order
        of `trainable()`. For tests and art-bench; the learner stays as it was."""
        batch = Batch.from_groups(groups)
        batch.image_versions = [self.version] * len(batch)
        advantages_B = self.objective.advantages(batch.rewards_GN).reshape(-1)
        rows = list(range(len(batch)))
        mine = self.data_parallel.share(batch, rows)
        old_BT = torch.zeros(len(batch), batch.max_len, device=self.policy.device)
        self.minibatch_gradient(
            batch, mine, old_BT, advantages_B, set(mine), sum(batch.lengths), len(batch)
        )
        grads = [p.grad.detach().cpu().clone() for p in self.trainable()]
        self.optimizer.zero_grad(set_to_none=True)
        return grads

    def accumulate_gradient(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int] = frozenset(),
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The policy loss of the minibatch `indices` backpropagated into the pixel logits: one
        encode, micro-batches accumulating into the image features (a leaf), then one backward
        through the vision tower. Rows in `fill_old` take their old log-probs from this forward
        (the policy has not moved yet). `num_tokens`, `num_sequences`: the aggregation's
        denominators, the minibatch's token and sequence counts (default: those of
        `indices`)."""
        if num_tokens is None:
            num_tokens = sum(batch.lengths[i] for i in indices)
        if num_sequences is None:
            num_sequences = len(indices)
        objective = self.objective
        settings = objective.loss_settings(num_tokens, num_sequences)
        correction = self.settings.rollout_correction, self.settings.rollout_correction_cap
        rollout_BT, _ = batch.rollout_logprobs_BT(self.policy.device)
        keys = ("loss", "clip_frac_low", "clip_frac_high", "clip_frac_dual", "ratio_mean")
        totals = dict.fromkeys(keys, 0.0)
        with self.trained.gradient_pass(self.policy) as encoded:
            for idx in self.micro_batches(batch, indices):
                logprobs_BT, mask_BT = self.policy.sequence_logprobs(
                    encoded, [batch.prompt_ids[i] for i in idx], [batch.token_ids[i] for i in idx]
                )
                width = logprobs_BT.shape[1]
                for row, i in enumerate(idx):
                    if i in fill_old:
                        old_BT[i, :width] = logprobs_BT[row].detach()
                weights_BT = correction_weights(  # after the old log-probs are all in
                    old_BT[idx, :width],
                    rollout_BT[idx, :width],
                    mask_BT,
                    *correction,
                )
                loss, stats = objective.policy_loss(
                    logprobs_BT,
                    old_BT[idx, :width],
                    advantages_B[idx].to(logprobs_BT.device),
                    mask_BT,
                    settings,
                    weights_BT,
                )
                loss.backward()
                totals["loss"] += loss.item()
                for key in keys[1:]:
                    totals[key] += stats[key]
        return totals
