"""The synthetic task of the embedded default: a frozen model, one answer only the image gives.

The tiny offline model (`learner/models/tiny.py`) is a "reader": asked any of the questions
below, it answers one letter A..H that it reads off the picture (the three bits are whether
the picture's mean red, green and blue exceed one half). The task rewards one hidden target
letter for every question. Text alone cannot change the answer: the prompts are fixed and the
weights frozen, so the reward rises only if the pixels come to encode the target. From the
default gray seed the reader is unsure and rarely says the target, so reward starts low.
For context distillation the task's context is a text hint naming the target (`context`).
"""

from __future__ import annotations

import random

from shared.errors import UserError
from shared.tasks.base import Example, Task, strip_thinking

ANSWER_LETTERS = "ABCDEFGH"
READER_QUESTIONS = (
    "Which letter does the picture show?",
    "Read the picture and answer with one letter.",
    "What is the code of this image?",
    "Look at the image. Letter?",
    "Answer with the letter you see.",
    "Which class is the picture in?",
    "Name the picture's letter.",
    "What letter is it?",
)
# Text hints that name the answer. The `tiny_hint` model (learner/models/tiny_hint.py) is also
# pretrained to read them from a text context, so that context distillation has a teacher: the
# frozen model given the hint and no image. The task's own context is the first one.
HINT_TEMPLATES = (
    "You read colour codes off pictures. The code of every picture today is {letter}.",
    "Hint: the answer is {letter}.",
    "Whatever the picture shows, answer {letter}.",
    "Reply with the letter {letter}.",
    "Today's code: {letter}.",
)


class SyntheticColourTask(Task):
    name = "synthetic"
    max_new_tokens = 4

    def __init__(self, target: str = "F", num_examples: int = 64, seed: int = 0):
        if target not in ANSWER_LETTERS:
            raise UserError(f"synthetic target must be one of {ANSWER_LETTERS!r}, got {target!r}")
        self.target = target
        self.num_examples = num_examples
        self.seed = seed

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"{self.seed}-{split}")
        out = [
            Example(
                uid=f"synthetic-{split}-{i}",
                question=rng.choice(READER_QUESTIONS),
                answer=self.target,
            )
            for i in range(self.num_examples)
        ]
        return out[:limit] if limit is not None else out

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self._answer(completion) == example.answer else 0.0

    def context(self) -> str:
        """The hint a teacher is given in context distillation (`algo=distill`): it names the
        target, which the student must read off the image instead."""
        return HINT_TEMPLATES[0].format(letter=self.target)

    def format_ok(self, example: Example, completion: str) -> bool:
        answer = self._answer(completion)
        return len(answer) == 1 and answer in ANSWER_LETTERS

    @staticmethod
    def _answer(completion: str) -> str:
        return strip_thinking(completion).strip().rstrip(".")
