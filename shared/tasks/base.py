"""The task interface every task implements."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Example:
    """One task example: the user-facing question, its gold answer and free metadata."""

    uid: str
    question: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class: `examples`, strict `score` (0.0 or 1.0) and shaped `reward` in [0, 1]."""

    name: str = "task"
    system_prompt: str | None = None
    max_new_tokens: int = 512
    # The seed picture `image.init=icon:task` starts from (shared/images.py: math, wrench).
    icon: str = "math"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> float:
        raise NotImplementedError

    def reward(self, example: Example, completion: str) -> float:
        return self.score(example, completion)

    def format_ok(self, example: Example, completion: str) -> bool:
        """Whether the completion answers in the requested format (right or wrong)."""
        return self.score(example, completion) == 1.0

    def gold_completion(self, example: Example) -> str:
        """The completion supervised fine-tuning fits (`algo=sft`): the data's own completion
        (`metadata["completion"]`) where it has one, else the gold answer. Tasks whose score
        wants a format answer in it, so that the target scores 1."""
        return str(example.metadata.get("completion", example.answer))

    def context(self) -> str | None:
        """The task's own text context for context distillation (`algo=distill`: the teacher
        is given it, the student the image instead); None: the task has none, the run gives
        one (`algo.distill.context` or `context_file`)."""
        return None


def strip_thinking(text: str) -> str:
    """Drop `<think>...</think>` blocks (and an unterminated leading one) before scoring."""
    text = _THINK_RE.sub("", text)
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text.strip()
