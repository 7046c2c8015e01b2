"""`algo=sft`: supervised fine-tuning into the trained policy: the log-likelihood of each
example's gold completion (`Task.gold_completion`) given the image and the prompt. A step
draws `algo.prompts_per_step` examples; nothing is sampled (the periodic evaluation still
samples)."""

from __future__ import annotations

from typing import Any

from omegaconf import open_dict

from learner.driver.algorithms.base import Algorithm
from learner.driver.algorithms.tokens import PromptTokens
from learner.driver.rollouts import StepRollouts, uses_image
from shared.messages import TargetSequence


class SupervisedFineTuning(Algorithm):
    name = "sft"
    min_group_size = 1
    samples_ahead = False
    sequences_formula = "prompts_per_step"

    def sequences_per_step(self, algo: Any) -> int:
        return algo.prompts_per_step  # one gold completion per prompt

    def resolve(self, cfg: Any, max_new_tokens: int) -> None:
        with open_dict(cfg):
            if cfg.algo.loss_agg_mode is None:
                cfg.algo.loss_agg_mode = "token-mean"

    def start(self, run: Any) -> None:
        self.tokens = PromptTokens(run.prompt_for.processor, run.cfg.image.height,
                                   run.cfg.image.width)  # fmt: skip

    def batch(self, run: Any, step: int) -> StepRollouts:
        return sft_targets(run.cfg, run.task, run.sampler, run.prompt_for, self.tokens, step)


def sft_targets(cfg, task, sampler, prompt_for, tokens: PromptTokens, step: int) -> StepRollouts:
    """A step of supervised fine-tuning: `algo.prompts_per_step` examples, each with its gold
    completion, tokenized as the assistant's turn (its text, then the end-of-turn token: what
    an engine returns for a completion that stopped on its own)."""
    with_image = uses_image(cfg)
    out = StepRollouts(step=step)
    for example in sampler.take(cfg.algo.prompts_per_step):
        prompt = tokens.prompt(prompt_for(example, with_image), with_image)
        completion = tokens.completion(task.gold_completion(example))
        out.kept.append(TargetSequence(prompt, completion))
        out.lengths.append(len(completion))
    out.groups_seen = len(out.kept)
    return out
