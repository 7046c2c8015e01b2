"""The driver's side of the objectives (docs/objectives.md).

- `resolve_objective`: the loss checked before anything starts (a user's `module:function` is
  imported and its signature checked here), and its own defaults filled into `algo.*` where
  the config leaves them null, so that the run's config.yaml says what ran.
- The per-step batches of the objectives that learn from target sequences instead of rewarded
  groups, in place of sample/score/filter:
  - `sft_targets`: each drawn example's gold completion (`Task.gold_completion`), tokenized as
    the assistant's turn: its text followed by the end-of-turn token, what an engine returns
    for a completion that stopped on its own. No sampling.
  - `distill_rollouts`: G completions per prompt sampled by the teacher (the text context, no
    image: forward KL) or by the student (the image, no context: reverse KL), scored by the
    task where it has a score, with both prompts' token ids for the learner.
Prompt token ids are made as the engines make them: the model's processor on the rendered
prompt, with an image of the run's size where the prompt holds one (the image placeholder is
expanded to exactly the engine's number of image tokens; the learner checks it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.errors import UserError
from shared.messages import RolloutRequest, SamplingConfig, TargetSequence
from shared.sampling import round_seed

logger = logging.getLogger("art.objectives")
END_OF_TURN = "<|im_end|>"


def resolve_objective(cfg) -> None:
    """Refuse an unknown loss at start-up; fill `loss_agg_mode`, `norm_adv_by_std` and, for
    `seq-mean-token-sum-norm`, `loss_scale_factor` (the completion-length limit)."""
    from omegaconf import open_dict

    from learner.objectives import TARGET_OBJECTIVES, get_policy_loss

    algo = cfg.algo
    with open_dict(cfg):
        if algo.loss in TARGET_OBJECTIVES:
            if algo.loss_agg_mode is None:
                algo.loss_agg_mode = "token-mean"
            return
        spec = get_policy_loss(algo.loss)
        if algo.loss_agg_mode is None:
            algo.loss_agg_mode = spec.loss_agg_mode
        if algo.norm_adv_by_std is None:
            algo.norm_adv_by_std = spec.norm_adv_by_std


def fill_loss_scale_factor(cfg, max_new_tokens: int) -> None:
    """seq-mean-token-sum-norm divides by a constant: the completion-length limit unless
    `algo.loss_scale_factor` is given (Dr. GRPO's and TRL's max_completion_length)."""
    from omegaconf import open_dict

    if cfg.algo.loss_agg_mode == "seq-mean-token-sum-norm" and cfg.algo.loss_scale_factor is None:
        with open_dict(cfg):
            cfg.algo.loss_scale_factor = int(max_new_tokens)


def distill_context(cfg, task) -> str:
    """The teacher's text context: `algo.distill.context`, the file `context_file`, or the
    task's own."""
    settings = cfg.algo.distill
    if settings.context is not None:
        text = str(settings.context)
    elif settings.context_file is not None:
        path = Path(settings.context_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(
                f"algo.distill.context_file={path}: cannot be read as UTF-8 text ({err}); give "
                "a readable text file, or the text itself as algo.distill.context"
            ) from err
    else:
        text = task.context()
        if text is None:
            raise UserError(
                f"task {task.name} has no context of its own to distill; set "
                "algo.distill.context=<text> or algo.distill.context_file=<path>"
            )
    if not text.strip():
        raise UserError("the distillation context is empty; give the teacher's text")
    return text


class PromptTokens:
    """Token ids as the engines make them (`rollout_worker/hf_engine.py`: the model's
    processor on the rendered prompt and the image), for prompts nobody sampled from."""

    def __init__(self, processor, height: int, width: int):
        from PIL import Image

        self.processor, self.tokenizer = processor, processor.tokenizer
        self.blank = Image.new("RGB", (width, height))  # only its size counts
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if self.end_of_turn is None or self.end_of_turn == self.tokenizer.unk_token_id:
            self.end_of_turn = self.tokenizer.eos_token_id
        self._cache: dict[tuple[str, bool], tuple[int, ...]] = {}

    def prompt(self, text: str, with_image: bool) -> tuple[int, ...]:
        key = (text, with_image)
        if key not in self._cache:
            images = [self.blank] if with_image else None
            ids = self.processor(text=[text], images=images, return_tensors="pt")["input_ids"]
            self._cache[key] = tuple(int(t) for t in ids[0].tolist())
        return self._cache[key]

    def completion(self, text: str) -> tuple[int, ...]:
        """The assistant's turn: the text's tokens, then the end-of-turn token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (*(int(t) for t in ids), int(self.end_of_turn))


def teacher_prompt(cfg, prompt_for, example, context: str) -> str:
    """The teacher's prompt: the context (in its own system turn, or before the question) and
    no image."""
    from shared.prompts import render_prompt

    system, question = cfg.task.system_prompt, example.question
    if cfg.algo.distill.placement == "system":
        system = f"{system}\n\n{context}" if system else context
    else:
        question = f"{context}\n\n{question}"
    return render_prompt(
        prompt_for.processor, question, system, cfg.task.enable_thinking, with_image=False
    )


def sft_targets(cfg, task, sampler, prompt_for, tokens: PromptTokens, step: int):
    """A step of supervised fine-tuning: `algo.prompts_per_step` examples, each with its gold
    completion; nothing is sampled."""
    from learner.driver.rollouts import StepRollouts, uses_image

    with_image = uses_image(cfg)
    out = StepRollouts(step=step)
    for example in sampler.take(cfg.algo.prompts_per_step):
        prompt = tokens.prompt(prompt_for(example, with_image), with_image)
        completion = tokens.completion(task.gold_completion(example))
        out.kept.append(TargetSequence(prompt, completion))
        out.lengths.append(len(completion))
    out.groups_seen = len(out.kept)
    return out


def distill_rollouts(
    cfg, pool, task, sampler, prompt_for, tokens: PromptTokens, context: str, step: int
):
    """A step of context distillation: G completions for each of `algo.prompts_per_step`
    prompts, sampled by the teacher (forward) or the student with the current image
    (reverse), scored by the task; both prompts' ids for the learner."""
    from learner.driver.rollouts import StepRollouts

    algo = cfg.algo
    forward = algo.distill.direction == "forward"
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    examples = sampler.take(algo.prompts_per_step)
    teacher_texts = [teacher_prompt(cfg, prompt_for, ex, context) for ex in examples]
    student_texts = [prompt_for(ex, True) for ex in examples]
    texts = teacher_texts if forward else student_texts
    requests = [
        RolloutRequest(request_id=i, prompt=text, n=algo.group_size, with_image=not forward)
        for i, text in enumerate(texts)
    ]
    sampling = SamplingConfig(
        temperature=algo.temperature,
        max_new_tokens=max_new,
        top_p=cfg.rollout.top_p,
        seed=round_seed(cfg.seed, step, 0),
    )
    groups = pool.generate(requests, sampling)
    out = StepRollouts(step=step, rounds=1, num_workers=len(pool))
    saved, accuracies = [], []
    for example, teacher_text, student_text, group in zip(
        examples, teacher_texts, student_texts, groups, strict=True
    ):
        # the sampled side's prompt as the engine tokenized it, the other side's as it would
        sampled = tuple(group[0].prompt_token_ids)
        student_ids = tokens.prompt(student_text, True) if forward else sampled
        teacher_ids = sampled if forward else tokens.prompt(teacher_text, False)
        saved.append(len(teacher_ids) - len(student_ids))
        for completion in group:
            out.kept.append(TargetSequence(student_ids, completion.token_ids, teacher_ids))
            out.lengths.append(len(completion.token_ids))
            accuracies.append(score_or_zero(task, example, completion.text))
        out.completions += len(group)
    out.groups_seen = len(groups)
    who = "teacher" if forward else "student"
    out.extra = {
        f"{who}_sample_accuracy": sum(accuracies) / len(accuracies),
        "prompt_tokens_saved": sum(saved) / len(saved),
    }
    return out


def score_or_zero(task, example, text: str) -> float:
    try:
        return float(task.score(example, text))
    except Exception as err:  # a scoring bug must not stop a run that does not train on it
        logger.warning("task %s failed to score example %s: %r", task.name, example.uid, err)
        return 0.0
