"""The learner's update on target sequences (`TargetSequence`s) instead of rewarded groups:
supervised fine-tuning (`algo.loss=sft`) and context distillation (`algo.loss=distill`).

The same machinery as the policy-gradient update (`learner/learner.py`), whatever is trained
(ART's pixels or the LoRA baseline's adapter): a random split into `num_minibatches`
minibatches, one optimizer step each; micro-batches within the sequence and token budgets; one
vision encode per minibatch; with replicas, each takes its share of every minibatch and the
trained tensors' gradient is all-reduced; a NaN/inf loss or gradient skips the step. There are
no old log-probs, advantages or rollout correction: the targets are not samples of the policy
being trained (sft), or the loss is an exact KL at each sampled position (distill).

Distillation runs two forwards per micro-batch on the same completion tokens: the teacher's
(its prompt with the context, no image; no gradient) and the student's (its prompt with the
image). The KL over the whole vocabulary is evaluated chunk by chunk of positions, each chunk
recomputed in backward, so at most one chunk of both sides' logits is alive (about 2**24
logits per side: 128 positions at Qwen3.5's 248k vocabulary).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from learner.learner import mean_finite
from learner.objectives.distill import distill_loss, token_kl
from learner.objectives.supervised import sft_loss
from shared.messages import TargetSequence


@dataclass
class TargetBatch:
    """Target sequences, flattened: the student's prompt ids (image placeholder expanded when
    the trained policy sees the image), the completion ids, the teacher's prompt ids
    (distill)."""

    prompt_ids: list[tuple[int, ...]]
    token_ids: list[tuple[int, ...]]
    teacher_prompt_ids: list[tuple[int, ...]]

    @classmethod
    def from_sequences(cls, sequences: Sequence[TargetSequence]) -> TargetBatch:
        return cls(
            [s.prompt_token_ids for s in sequences],
            [s.token_ids for s in sequences],
            [s.teacher_prompt_token_ids for s in sequences],
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]

    def budget(self) -> TargetBatch:
        """The sizes the micro-batch budget and the replicas' shares go by: each row's longer
        prompt (the teacher's forward runs the same micro-batch)."""
        longer = [
            t if len(t) > len(p) else p
            for p, t in zip(self.prompt_ids, self.teacher_prompt_ids, strict=True)
        ]
        return TargetBatch(longer, self.token_ids, self.teacher_prompt_ids)


def fit_targets(learner, sequences: Sequence[TargetSequence]):
    """One learner step on target sequences; returns (metrics, policy update) like
    `Learner.update`."""
    start, learner.data_parallel.allreduce_s = time.perf_counter(), 0.0
    if learner.on_cuda:
        torch.cuda.reset_peak_memory_stats()
    batch = TargetBatch.from_sequences(sequences)
    sizes = batch.budget()
    version = learner.version
    before = [p.detach().clone() for p in learner.trainable()]
    stats = []
    for rows in learner.minibatches(len(batch)):
        learner.optimizer.zero_grad(set_to_none=True)
        totals = accumulate_target_gradient(
            learner,
            batch,
            learner.data_parallel.share(sizes, rows),
            num_tokens=sum(batch.lengths[i] for i in rows),
            num_sequences=len(rows),
        )
        stats.append(learner.optimizer_step(learner.sum_over_replicas(totals)))
    skipped = learner.commit(version, before, stats)
    update = learner.policy_update()
    taken = [s for s in stats if np.isfinite(s["loss"])] or stats
    metrics = {k: float(np.mean([s[k] for s in taken])) for k in taken[0] if k != "grad_norm"}
    metrics.update({k: float(v) for k, v in learner.trained.update_metrics(update).items()})
    metrics.update(
        {
            "skipped_updates": float(skipped),
            "consecutive_skips": float(learner.consecutive_skips),
            "grad_norm": mean_finite([s["grad_norm"] for s in stats]),
            "num_sequences": float(len(batch)),
            "learner_time_s": time.perf_counter() - start,
        }
    )
    learner.finish_update(metrics)
    return metrics, update


def accumulate_target_gradient(
    learner, batch: TargetBatch, indices: list[int], num_tokens: int, num_sequences: int
) -> dict[str, float]:
    """The sft or distill loss of `indices` backpropagated into the trained tensors: one
    encode, micro-batches accumulating, one backward through the vision tower. The loss is
    divided by the whole minibatch's counts (every micro-batch, every replica)."""
    policy, distill = learner.policy, learner.loss == "distill"
    totals = dict.fromkeys(("loss", "kl" if distill else "nll_per_token"), 0.0)
    with learner.trained.gradient_pass(policy) as encoded:
        for idx in learner.micro_batches(batch.budget(), indices):
            prompts = [batch.prompt_ids[i] for i in idx]
            tokens = [batch.token_ids[i] for i in idx]
            if distill:
                with torch.no_grad():
                    teacher = policy.completion_states(
                        None, [batch.teacher_prompt_ids[i] for i in idx], tokens
                    )
                student = policy.completion_states(encoded, prompts, tokens)
                kl_N = chunked_token_kl(
                    policy, student.hidden_ND, teacher.hidden_ND, learner.distill_direction
                )
                kl_BT, mask_BT = student.scatter(kl_N)
                loss, stats = distill_loss(
                    kl_BT, mask_BT, learner.loss_agg_mode, num_tokens, num_sequences
                )
            else:
                logprobs_BT, mask_BT = policy.sequence_logprobs(encoded, prompts, tokens)
                loss, stats = sft_loss(
                    logprobs_BT, mask_BT, learner.loss_agg_mode, num_tokens, num_sequences
                )
            loss.backward()
            totals["loss"] += loss.item()
            for key, value in stats.items():
                totals[key] += value
    return totals


def chunked_token_kl(
    policy, student_ND: torch.Tensor, teacher_ND: torch.Tensor, direction: str
) -> torch.Tensor:
    """KL per completion position (N,) from both sides' final hidden states, over the whole
    vocabulary, a chunk of positions at a time (each chunk recomputed in backward)."""

    def chunk_kl(student_CD: torch.Tensor, teacher_CD: torch.Tensor) -> torch.Tensor:
        return token_kl(policy.logits(student_CD), policy.logits(teacher_CD), direction)

    size = max(1, policy.chunk_tokens // 2)  # two sides' logits per chunk
    if student_ND.shape[0] <= size:
        return chunk_kl(student_ND, teacher_ND)
    chunks = []
    for first in range(0, student_ND.shape[0], size):
        s_CD, t_CD = student_ND[first : first + size], teacher_ND[first : first + size]
        if torch.is_grad_enabled() and s_CD.requires_grad:
            chunks.append(checkpoint(chunk_kl, s_CD, t_CD, use_reentrant=False))
        else:
            chunks.append(chunk_kl(s_CD, t_CD))
    return torch.cat(chunks)
