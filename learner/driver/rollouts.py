"""The rollout side as the driver sees it: prompts, fan-out to the workers, scoring, dynamic
sampling, and the broadcast of a new image to every worker."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup
from shared.sampling import round_seed


class PromptSampler:
    """Cycles through the task's examples in a seeded order, reshuffling each epoch."""

    def __init__(self, examples: Sequence, seed: int):
        if not examples:
            raise ValueError("the task returned no examples for this split")
        self.examples, self.rng, self.order = list(examples), random.Random(seed), []

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order.pop()])
        return out


def split_validation(examples: Sequence, val_size: int, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded slice of the training split held out of the training
    prompts, for the periodic evaluation that picks `best.png` (never the test split)."""
    if val_size >= len(examples):
        raise ValueError(
            f"eval.val_size={val_size} leaves no training examples (the split has "
            f"{len(examples)}); lower eval.val_size or set eval.every=0"
        )
    order = list(range(len(examples)))
    random.Random(f"validation-{seed}").shuffle(order)
    held = set(order[:val_size])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


def prompt_builder(cfg, model_path: str):
    """`prompt_for(example, with_image=True) -> str`: the one prompt rendering used by
    training, periodic evaluation and art-eval (image first, then the task's question)."""
    from transformers import AutoProcessor

    from shared.prompts import render_prompt

    templater = AutoProcessor.from_pretrained(model_path)

    def prompt_for(example, with_image: bool = True) -> str:
        return render_prompt(
            templater,
            example.question,
            cfg.task.system_prompt,
            cfg.task.enable_thinking,
            with_image=with_image,
        )

    return prompt_for


def rollout_requests(examples, prompt_for, group_size: int) -> list[RolloutRequest]:
    return [
        RolloutRequest(request_id=i, prompt=prompt_for(ex), n=group_size)
        for i, ex in enumerate(examples)
    ]


def generate_across_workers(ray, workers, requests, sampling) -> list[list]:
    """Split requests over the workers (contiguous chunks), gather groups in request order."""
    per = math.ceil(len(requests) / len(workers))
    chunks = [requests[i * per : (i + 1) * per] for i in range(len(workers))]
    futures = [w.generate.remote(c, sampling) for w, c in zip(workers, chunks, strict=True) if c]
    return [group for result in ray.get(futures) for group in result]


def broadcast(ray, workers, update) -> None:
    """One copy of the PNG into the object store; every worker swaps to it."""
    ref = ray.put(update.png)
    versions = ray.get([w.set_image.remote(update.version, ref) for w in workers])
    if any(v != update.version for v in versions):
        raise RuntimeError(f"workers report image versions {versions}, expected {update.version}")


@dataclass
class StepRollouts:
    """What the sample/score/filter phases produce for one step."""

    kept: list[ScoredGroup] = field(default_factory=list)
    first_round_rewards: list[float] = field(default_factory=list)
    first_round_accuracies: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    groups_seen: int = 0
    rounds: int = 0


def score_groups(task, examples, requests, groups, max_new: int, overlong_buffer: int):
    """Task reward plus DAPO's overlong shaping, and the strict accuracy, per completion."""
    from learner.dapo import overlong_penalty

    scored = []
    for ex, req, comps in zip(examples, requests, groups, strict=True):
        acc = [task.score(ex, c.text) for c in comps]
        rew = [
            task.reward(ex, c.text) + overlong_penalty(len(c.token_ids), max_new, overlong_buffer)
            for c in comps
        ]
        scored.append(ScoredGroup(req.prompt, tuple(comps), tuple(rew), tuple(acc)))
    return scored


def compute_rollouts(cfg, ray, workers, task, sampler, prompt_for, step: int) -> StepRollouts:
    """Sample, score and filter (dynamic sampling) until the batch is full or the extra
    rounds are spent."""
    from learner.dapo import keep_informative_groups

    algo = cfg.algo
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    out = StepRollouts()
    while len(out.kept) < algo.prompts_per_step and out.rounds <= algo.max_extra_rounds:
        sampling = SamplingConfig(
            temperature=algo.temperature,
            max_new_tokens=max_new,
            top_p=cfg.rollout.top_p,
            seed=round_seed(cfg.seed, step, out.rounds),
        )
        examples = sampler.take(algo.prompts_per_step)
        requests = rollout_requests(examples, prompt_for, algo.group_size)
        groups = generate_across_workers(ray, workers, requests, sampling)
        scored = score_groups(task, examples, requests, groups, max_new, algo.overlong_buffer)
        out.lengths.extend(len(c.token_ids) for g in scored for c in g.completions)
        if out.rounds == 0:  # the unbiased estimate of the current policy's reward
            out.first_round_rewards = [r for g in scored for r in g.rewards]
            out.first_round_accuracies = [a for g in scored for a in g.accuracies]
        keep = keep_informative_groups(
            [g.accuracies for g in scored],
            [g.rewards for g in scored],
            algo.filter_metric,
            algo.min_reward_std,
        )
        out.kept.extend(scored[i] for i in keep)
        out.groups_seen += len(scored)
        out.rounds += 1
    out.kept = out.kept[: algo.prompts_per_step]
    return out
