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

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> float:
        raise NotImplementedError

    def reward(self, example: Example, completion: str) -> float:
        return self.score(example, completion)

    def format_ok(self, example: Example, completion: str) -> bool:
        """Whether the completion answers in the requested format (right or wrong)."""
        return self.score(example, completion) == 1.0


def strip_thinking(text: str) -> str:
    """Drop `<think>...</think>` blocks (and an unterminated leading one) before scoring."""
    text = _THINK_RE.sub("", text)
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text.strip()
