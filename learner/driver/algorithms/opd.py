"""`algo=opd`: on-policy distillation from a teacher *model* into the image. The student (the
frozen model with the trained image) samples G completions per prompt; a second frozen model
with the same tokenizer (`algo.teacher.model`: a larger model of the family, say) scores them,
and the learner lowers the reverse KL per token, KL(student || teacher), over the whole
vocabulary at every sampled position (prime-rl's `opd`; Agarwal et al. 2024, "On-policy
distillation"). The use: a larger model's behaviour on a task, distilled into an image that the
small model is served with. The teacher's prompt is the question without the image, with
`algo.teacher.context` if given (`task`: the task's own context).

Only the learner holds the teacher (`learner/supervised.py`: `OnPolicyDistillation`); the
rollout workers serve the student alone.
"""

from __future__ import annotations

from typing import Any

from learner.driver.algorithms.distill import ContextDistillation, teacher_prompt
from learner.models import resolve_model_path
from shared.errors import UserError


class OnPolicyDistillation(ContextDistillation):
    name = "opd"
    teacher_in_pool = False  # the rollout workers serve the student only: no teacher eval
    history_keys = ("kl", "prompt_tokens_saved", "student_sample_accuracy")

    @property
    def forward(self) -> bool:
        return False  # the student samples: on-policy

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        teacher = cfg.algo.teacher
        return [
            *super().rules(cfg),
            (
                teacher.model is not None,
                "algo=opd needs a teacher: set algo.teacher.model=<model name, hub id or "
                "folder> (the same tokenizer as model.name)",
            ),
            (
                teacher.placement in ("system", "user"),
                f"algo.teacher.placement={teacher.placement!r}: use system or user",
            ),
        ]

    def prepare(self, cfg: Any, task: Any) -> None:
        context = cfg.algo.teacher.context
        if context == "task":
            context = task.context()
            if context is None:
                raise UserError(
                    f"algo.teacher.context=task: task {task.name} has no context of its own; "
                    "give the text, or null for none"
                )
        self.context = context
        resolve_model_path(cfg.algo.teacher.model)  # a missing teacher refused before any actor

    def learner_settings(self, cfg: Any) -> dict:
        return {"teacher_model_path": resolve_model_path(cfg.algo.teacher.model)}

    def teacher_text(self, cfg, prompt_for, example) -> str:
        placement = cfg.algo.teacher.placement
        return teacher_prompt(cfg, prompt_for, example, self.context, placement)
