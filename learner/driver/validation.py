"""Accuracy of the rollout workers' current policy (or of none) on examples, with the
evaluation's settings: what `art-eval` reports per condition and what training logs on its
validation slice (the paper's decoding: greedy, the task's token limit, presence penalty 1.0)."""

from __future__ import annotations

import logging
import time

from shared.messages import RolloutRequest, SamplingConfig
from shared.tasks.scoring import as_scorer

logger = logging.getLogger("art.eval")


def eval_requests(examples, prompt_for, with_image: bool, image_key: str = "") -> list:
    """One greedy request per example (`image_key`: a task's image in a multi-task run)."""
    return [
        RolloutRequest(request_id=i, prompt=prompt_for(ex, with_image), n=1,
                       with_image=with_image, image_key=image_key if with_image else "")
        for i, ex in enumerate(examples)
    ]  # fmt: skip


def eval_sampling(cfg, task) -> SamplingConfig:
    """The paper's evaluation decoding: greedy, the task's token limit (512 for math), a
    presence penalty of 1.0 (`eval.presence_penalty`)."""
    return SamplingConfig(
        max_new_tokens=cfg.eval.max_new_tokens or task.max_new_tokens,
        greedy=True,
        seed=0,
        presence_penalty=cfg.eval.presence_penalty,
    )


def evaluate_condition(
    pool, task, examples, prompt_for, with_image, sampling, label: str = "", image_key: str = ""
) -> dict:
    """Greedy completions for every example on the workers' current image (or none), in
    batches with a progress line each. `task`: the run's Scorer (the strict score of
    `task.score` or of the reward functions), or a plain task scored by its own methods."""
    scorer = as_scorer(task)
    requests = eval_requests(examples, prompt_for, with_image, image_key)
    batch = max(len(pool.workers) * 32, 1)
    start, completions, accuracies, failures = time.perf_counter(), [], [], 0
    for first in range(0, len(requests), batch):
        groups = pool.generate(requests[first : first + batch], sampling)
        chunk = [g[0] for g in groups]
        scores = scorer.score(
            examples[first : first + len(chunk)],
            [c.text for c in chunk],
            [c.token_ids for c in chunk],
            group_size=16,
        )
        completions.extend(chunk)
        accuracies.extend(scores.accuracies)
        failures += sum(scores.failed)
        if len(requests) > batch:
            done = len(completions)
            logger.info(
                "%s%d/%d examples, accuracy so far %.3f",
                f"{label}: " if label else "",
                done,
                len(requests),
                sum(accuracies) / done,
            )
    elapsed = time.perf_counter() - start
    pairs = list(zip(examples, completions, strict=True))
    tokens = sum(len(c.token_ids) for c in completions)
    n = len(examples)
    return {
        "accuracy": sum(accuracies) / n,
        "format_rate": sum(scorer.task.format_ok(ex, c.text) for ex, c in pairs) / n,
        "reward_failures": failures,
        "n": n,
        "mean_completion_tokens": tokens / n,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else float("nan"),
        "ids": [ex.uid for ex in examples],
        "samples": [
            {"uid": ex.uid, "answer": ex.answer, "completion": c.text} for ex, c in pairs[:5]
        ],
    }
