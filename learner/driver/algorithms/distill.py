"""`algo=distill`: context distillation into the image. The teacher is the same frozen model
given a text context (`algo.distill.context`, `context_file`, or the task's own) and no
image; the student is the model given the image and no context. Forward: KL(teacher ||
student) on completions the teacher samples; reverse: KL(student || teacher) on completions
the student samples with the current image (on-policy). A step samples G completions for each
of `algo.prompts_per_step` prompts, scores them with the task where it can (the sample
accuracy is logged, not trained on), and hands the learner both prompts' token ids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from learner.driver.algorithms.base import Algorithm
from learner.driver.algorithms.tokens import PromptTokens
from learner.driver.checkpoint import DriverState
from learner.driver.rollouts import StepRollouts
from learner.driver.tracking import mean
from learner.driver.validation import eval_sampling, evaluate_condition
from shared.errors import UserError
from shared.messages import RolloutRequest, SamplingConfig, TargetSequence
from shared.prompts import render_prompt
from shared.sampling import round_seed

logger = logging.getLogger("art.objectives")


class ContextDistillation(Algorithm):
    name = "distill"
    teacher_in_pool = True  # the teacher is the served model: evaluated at step 0
    min_group_size = 1
    samples_ahead = False
    history_keys = ("kl", "prompt_tokens_saved", "teacher_sample_accuracy",
                    "student_sample_accuracy")  # fmt: skip

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        settings = cfg.algo.distill
        return [
            *super().rules(cfg),
            (
                cfg.method.name == "art",
                f"algo.loss={cfg.algo.loss} needs method=art: the teacher is the frozen model "
                "without the trained policy, and a LoRA adapter is applied to every engine "
                "request",
            ),
            (
                settings.direction in ("forward", "reverse"),
                f"algo.distill.direction={settings.direction!r}: use forward (teacher samples) "
                "or reverse (student samples, on-policy)",
            ),
            (
                settings.placement in ("system", "user"),
                f"algo.distill.placement={settings.placement!r}: use system or user",
            ),
            (
                settings.context is None or settings.context_file is None,
                "algo.distill.context and algo.distill.context_file are both set: give one",
            ),
        ]

    def resolve(self, cfg: Any, max_new_tokens: int) -> None:
        with open_dict(cfg):
            if cfg.algo.loss_agg_mode is None:
                cfg.algo.loss_agg_mode = "token-mean"

    @property
    def forward(self) -> bool:
        return self.cfg.algo.distill.direction == "forward"

    def prepare(self, cfg: Any, task: Any) -> None:
        self.context = distill_context(cfg, task)

    def start(self, run: Any) -> None:
        self.tokens = PromptTokens(run.prompt_for.processor, run.cfg.image.height,
                                   run.cfg.image.width)  # fmt: skip
        if self.teacher_in_pool and run.state.step == 0 and run.held_out:
            self.teacher_eval(run)

    def teacher_text(self, cfg, prompt_for, example) -> str:
        return teacher_prompt(cfg, prompt_for, example, self.context)

    def teacher_eval(self, run: Any) -> None:
        """The teacher's greedy accuracy on the validation slice (its context, no image),
        once; `eval/teacher_accuracy` at step 0 and in the summary."""

        def prompt_for(example, with_image: bool = False) -> str:
            return self.teacher_text(run.cfg, run.prompt_for, example)

        sampling = eval_sampling(run.cfg, run.task)
        metrics = evaluate_condition(
            run.pool, run.task, run.held_out, prompt_for, False, sampling, "teacher"
        )
        run.state.teacher_accuracy = metrics["accuracy"]
        run.mlflow.log_metrics({"eval/teacher_accuracy": metrics["accuracy"]}, step=0)
        logger.info("teacher (context, no image) validation accuracy %.3f", metrics["accuracy"])

    def batch(self, run: Any, step: int) -> StepRollouts:
        """G completions for each of `algo.prompts_per_step` prompts, sampled by the teacher
        (forward) or the student with the current image (reverse), scored by the task; both
        prompts' ids for the learner."""
        cfg, algo, forward = run.cfg, run.cfg.algo, self.forward
        max_new = cfg.rollout.max_new_tokens or run.task.max_new_tokens
        examples = run.sampler.take(algo.prompts_per_step)
        teacher_texts = [self.teacher_text(cfg, run.prompt_for, ex) for ex in examples]
        student_texts = [run.prompt_for(ex, True) for ex in examples]
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
        groups = run.pool.generate(requests, sampling)
        out = StepRollouts(step=step, rounds=1, num_workers=len(run.pool))
        saved, accuracies = [], []
        for example, teacher_text, student_text, group in zip(
            examples, teacher_texts, student_texts, groups, strict=True
        ):
            # the sampled side's prompt as the engine tokenized it, the other side's as it would
            sampled = tuple(group[0].prompt_token_ids)
            student_ids = self.tokens.prompt(student_text, True) if forward else sampled
            teacher_ids = sampled if forward else self.tokens.prompt(teacher_text, False)
            saved.append(len(teacher_ids) - len(student_ids))
            for completion in group:
                out.kept.append(TargetSequence(student_ids, completion.token_ids, teacher_ids))
                out.lengths.append(len(completion.token_ids))
                accuracies.append(score_or_zero(run.task, example, completion.text))
            out.completions += len(group)
        out.groups_seen = len(groups)
        who = "teacher" if forward else "student"
        out.extra = {
            f"{who}_sample_accuracy": sum(accuracies) / len(accuracies),
            "prompt_tokens_saved": sum(saved) / len(saved),
        }
        return out

    def summary(self, state: DriverState) -> dict:
        """The KL gap closed: 1 - KL of the last 5 steps / KL of the first step (measured on
        that step's samples before its update, i.e. the seed image's), the prompt tokens
        saved and the teacher's accuracy."""
        kl = state.history.get("kl", [])
        out = super().summary(state)
        if kl:
            out.update(
                kl_seed=kl[0],
                kl_last5=mean(kl[-5:]),
                kl_gap_closed=1.0 - mean(kl[-5:]) / kl[0] if kl[0] > 0 else float("nan"),
                prompt_tokens_saved=mean(state.history.get("prompt_tokens_saved", [])),
                teacher_accuracy=state.teacher_accuracy,
            )
        return out


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


def teacher_prompt(cfg, prompt_for, example, context: str | None, placement=None) -> str:
    """The teacher's prompt: the context (in its own system turn, or before the question:
    `placement`, default `algo.distill.placement`) and no image; with no context, the
    question alone."""
    system, question = cfg.task.system_prompt, example.question
    placement = placement or cfg.algo.distill.placement
    if context and placement == "system":
        system = f"{system}\n\n{context}" if system else context
    elif context:
        question = f"{context}\n\n{question}"
    return render_prompt(
        prompt_for.processor, question, system, cfg.task.enable_thinking, with_image=False
    )


def score_or_zero(task, example, text: str) -> float:
    try:
        return float(task.score(example, text))
    except Exception as err:  # a scoring bug must not stop a run that does not train on it
        logger.warning("task %s failed to score example %s: %r", task.name, example.uid, err)
        return 0.0
