"""The learner's update on target sequences (`TargetSequence`s) instead of rewarded groups, and
the objectives that learn from them, each a class found by name in `TARGET_OBJECTIVES`:
supervised fine-tuning (`algo.loss=sft`), context distillation (`algo.loss=distill`) and
on-policy distillation from a teacher model (`algo.loss=opd`).

The same machinery as the policy-gradient update (`learner/learner.py`), whatever is trained
(ART's pixels or the LoRA baseline's adapter): a random split into `num_minibatches`
minibatches, one optimizer step each; micro-batches within the sequence and token budgets; one
vision encode per minibatch; with replicas, each takes its share of every minibatch and the
trained tensors' gradient is all-reduced; a NaN/inf loss or gradient skips the step. There are
no old log-probs, advantages or rollout correction: the targets are not samples of the policy
being trained (sft), or the loss is an exact KL at each sampled position (distill).

Distillation runs two forwards per micro-batch on the same completion tokens: the teacher's
(its prompt with the context, no image; no gradient) and the student's (its prompt with the
image). On-policy distillation's teacher is another frozen model with the same tokenizer (a
larger one, say), given its own prompt; its KL is distillation's reverse one. The KL over the whole vocabulary is evaluated chunk by chunk of positions, each chunk
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

from learner.batches import mean_finite
from learner.objectives.distill import distill_loss, token_kl
from learner.objectives.supervised import sft_loss
from learner.policy import FrozenPolicy, load_model_and_processor
from learner.settings import LearnerSettings
from shared.errors import UserError
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


class TargetObjective:
    """The learner's side of an objective on target sequences (Learner -> its `objective`):
    the loss of a micro-batch, through `fit_targets`'s minibatches and optimizer steps."""

    stat_key = "nll_per_token"  # the loss statistic it reports besides `loss`

    def __init__(self, settings: LearnerSettings):
        self.settings = settings
        self.loss_agg_mode = settings.loss_agg_mode or "token-mean"

    def setup(self, learner) -> None:
        """Anything it needs beyond the Learner's own model (a teacher)."""

    def update(self, learner, sequences: Sequence[TargetSequence]):
        return fit_targets(learner, sequences)

    def micro_batch_loss(self, learner, encoded, batch, idx, num_tokens, num_sequences):
        raise NotImplementedError


class SupervisedFineTuning(TargetObjective):
    """`algo.loss=sft`: the token-mean negative log-likelihood of the target completions."""

    def micro_batch_loss(self, learner, encoded, batch, idx, num_tokens, num_sequences):
        prompts = [batch.prompt_ids[i] for i in idx]
        tokens = [batch.token_ids[i] for i in idx]
        logprobs_BT, mask_BT = learner.policy.sequence_logprobs(encoded, prompts, tokens)
        return sft_loss(logprobs_BT, mask_BT, self.loss_agg_mode, num_tokens, num_sequences)


class ContextDistillation(TargetObjective):
    """`algo.loss=distill`: the KL between the teacher's next-token distribution (the same
    frozen model given the context and no image) and the student's (given the image), over
    the whole vocabulary at every completion position."""

    stat_key = "kl"

    def __init__(self, settings: LearnerSettings):
        super().__init__(settings)
        self.direction = settings.distill_direction

    def teacher(self, learner) -> FrozenPolicy:
        return learner.policy

    def micro_batch_loss(self, learner, encoded, batch, idx, num_tokens, num_sequences):
        tokens = [batch.token_ids[i] for i in idx]
        teacher = self.teacher(learner)
        with torch.no_grad():
            teacher_states = teacher.completion_states(
                None, [batch.teacher_prompt_ids[i] for i in idx], tokens
            )
        student = learner.policy.completion_states(
            encoded, [batch.prompt_ids[i] for i in idx], tokens
        )
        kl_N = chunked_token_kl(
            learner.policy, student.hidden_ND, teacher_states.hidden_ND, self.direction, teacher
        )
        kl_BT, mask_BT = student.scatter(kl_N)
        return distill_loss(kl_BT, mask_BT, self.loss_agg_mode, num_tokens, num_sequences)


class OnPolicyDistillation(ContextDistillation):
    """`algo.loss=opd`: the reverse KL per token from a teacher *model* (`algo.teacher.model`,
    another frozen model with the same tokenizer) on the student's own samples, as prime-rl's
    `opd` and on-policy distillation write it; the whole vocabulary at each position."""

    def __init__(self, settings: LearnerSettings):
        super().__init__(settings)
        self.direction = "reverse"
        self.teacher_policy: FrozenPolicy | None = None

    def setup(self, learner) -> None:
        s = self.settings
        model, processor = load_model_and_processor(
            s.teacher_model_path, dtype=s.dtype, device=s.device
        )
        vocab = model.config.get_text_config().vocab_size
        same_vocab = vocab == learner.model.config.get_text_config().vocab_size
        if (
            not same_vocab
            or processor.tokenizer.get_vocab() != learner.processor.tokenizer.get_vocab()
        ):
            raise UserError(
                f"algo.teacher.model={s.teacher_model_path} has another tokenizer than "
                f"model.name={s.model_name}: the teacher scores the student's tokens, so both "
                "need the same tokenizer (pick a teacher of the same family)"
            )
        self.teacher_policy = FrozenPolicy(
            model, processor, s.temperature, shared_prefix=s.shared_prefix
        )

    def teacher(self, learner) -> FrozenPolicy:
        return self.teacher_policy


# Objectives on target sequences by `algo.loss`; anything else is a policy-gradient loss.
TARGET_OBJECTIVES: dict[str, type[TargetObjective]] = {
    "sft": SupervisedFineTuning,
    "distill": ContextDistillation,
    "opd": OnPolicyDistillation,
}


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
    objective = learner.objective
    totals = dict.fromkeys(("loss", objective.stat_key), 0.0)
    with learner.trained.gradient_pass(learner.policy) as encoded:
        for idx in learner.micro_batches(batch.budget(), indices):
            loss, stats = objective.micro_batch_loss(
                learner, encoded, batch, idx, num_tokens, num_sequences
            )
            loss.backward()
            totals["loss"] += loss.item()
            for key, value in stats.items():
                totals[key] += value
    return totals


def chunked_token_kl(
    policy, student_ND: torch.Tensor, teacher_ND: torch.Tensor, direction: str, teacher=None
) -> torch.Tensor:
    """KL per completion position (N,) from both sides' final hidden states, over the whole
    vocabulary, a chunk of positions at a time (each chunk recomputed in backward). `teacher`:
    the teacher's policy when it is another model (its own output head)."""
    teacher = teacher or policy

    def chunk_kl(student_CD: torch.Tensor, teacher_CD: torch.Tensor) -> torch.Tensor:
        return token_kl(policy.logits(student_CD), teacher.logits(teacher_CD), direction)

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
