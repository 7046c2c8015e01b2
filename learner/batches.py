"""What the learner's updates work on: a batch of sampled completions flattened group by group
(`Batch`), the rollout/learner mismatch figures, and small helpers shared by the updates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.messages import Completion, ScoredGroup


@dataclass
class Batch:
    """A learner batch, flattened group by group: sequence b is completion b % G of group b // G."""

    prompt_ids: list[tuple[int, ...]]
    token_ids: list[tuple[int, ...]]
    rollout_logprobs: list[tuple[float, ...]]
    image_versions: list[int]
    rewards_GN: torch.Tensor  # (groups, G)

    @classmethod
    def from_groups(cls, groups: Sequence[ScoredGroup]) -> Batch:
        sizes = {len(g.completions) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"every group of a batch needs the same size, got sizes {sizes}")
        batch = cls.from_completions([c for g in groups for c in g.completions])
        batch.rewards_GN = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        return batch

    @classmethod
    def from_completions(cls, completions: Sequence[Completion]) -> Batch:
        return cls(
            prompt_ids=[c.prompt_token_ids for c in completions],
            token_ids=[c.token_ids for c in completions],
            rollout_logprobs=[c.logprobs for c in completions],
            image_versions=[c.image_version for c in completions],
            rewards_GN=torch.zeros(0, 0),
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def rollout_logprobs_BT(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's log-probs padded to (B, T), and the mask of real tokens."""
        rollout_BT = torch.zeros(len(self), self.max_len)
        mask_BT = torch.zeros(len(self), self.max_len)
        for i, lp in enumerate(self.rollout_logprobs):
            rollout_BT[i, : len(lp)] = torch.tensor(lp)
            mask_BT[i, : len(lp)] = 1.0
        return rollout_BT.to(device), mask_BT.to(device)


def mismatch_metrics(batch: Batch, learner_BT: torch.Tensor, version: int) -> dict[str, float]:
    """How far the rollout engine's log-probs are from the learner's on the sampled tokens."""
    rollout = np.concatenate([np.asarray(lp, dtype=np.float64) for lp in batch.rollout_logprobs])
    learner = np.concatenate(
        [row[:n].double().cpu().numpy() for row, n in zip(learner_BT, batch.lengths, strict=True)]
    )
    log_ratio = learner - rollout  # log p_learner / p_rollout on rollout samples
    stale = sum(v != version for v in batch.image_versions)
    return {
        "logprob_mean": float(learner.mean()),
        "mismatch_abs_mean": float(np.abs(log_ratio).mean()),
        # k3 estimator of KL(rollout || learner): E[(r - 1) - log r], r = p_learner/p_rollout
        "mismatch_kl": float(np.mean(np.expm1(log_ratio) - log_ratio)),
        "stale_completion_frac": stale / len(batch),
    }


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def to_cpu(obj):
    """A deep copy with every tensor on the CPU (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
