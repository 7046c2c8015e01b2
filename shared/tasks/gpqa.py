"""GPQA: graduate-level multiple choice. Options are shuffled per example with a seeded
permutation; the model answers `The correct answer is (X)`."""

from __future__ import annotations

import random

from shared.tasks.base import Example, Task
from shared.tasks.extract import extract_choice
from shared.tasks.loading import build_examples, load_hub_rows, load_local_rows, require

GPQA_INSTRUCTION = (
    "Think step by step, then end with 'The correct answer is (X)' where X is one of A, B, C, D."
)
LETTERS = "ABCD"


class GPQATask(Task):
    name = "gpqa"
    max_new_tokens = 512
    HUB = "Idavidrein/gpqa"

    def __init__(
        self,
        config: str = "gpqa_diamond",
        data_files: str | None = None,
        seed: int = 0,
        test_size: int = 0,
    ):
        self.config, self.data_files, self.seed = config, data_files, seed
        self.test_size = test_size

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        """GPQA ships one split; `train`/`test` are a seeded cut of it when test_size > 0."""
        if self.data_files:
            rows, source = load_local_rows(self.data_files), str(self.data_files)
        else:
            rows, source = load_hub_rows(self.HUB, self.config, "train", gated=True), self.HUB
        examples = build_examples(rows, source, self._to_example)
        if self.test_size and split in ("train", "test"):
            order = list(range(len(examples)))
            random.Random(self.seed).shuffle(order)
            cut = order[: self.test_size] if split == "test" else order[self.test_size :]
            examples = [examples[i] for i in sorted(cut)]
        return examples[:limit] if limit is not None else examples

    def _to_example(self, row, index: int, source: str) -> Example:
        question = require(row, "Question", source, index)
        correct = require(row, "Correct Answer", source, index)
        wrong = [require(row, f"Incorrect Answer {k}", source, index) for k in (1, 2, 3)]
        uid = str(row.get("Record ID") or f"gpqa-{index}")
        options = [correct.strip(), *(w.strip() for w in wrong)]
        perm = list(range(4))
        random.Random(f"{self.seed}-{uid}").shuffle(perm)
        shuffled = [options[i] for i in perm]
        gold = LETTERS[perm.index(0)]
        lines = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(shuffled))
        return Example(
            uid=uid,
            question=f"{question.strip()}\n\n{lines}\n\n{GPQA_INSTRUCTION}",
            answer=gold,
            metadata={"options": shuffled, "row": index},
        )

    def score(self, example: Example, completion: str) -> float:
        letter, explicit = extract_choice(completion)
        return 1.0 if explicit and letter == example.answer else 0.0

    def format_ok(self, example: Example, completion: str) -> bool:
        letter, explicit = extract_choice(completion)
        return explicit and letter is not None

    def reward(self, example: Example, completion: str) -> float:
        if self.score(example, completion) == 1.0:
            return 1.0
        letter, explicit = extract_choice(completion)
        if explicit:
            return 0.1  # answered in the requested format, wrong letter
        return 0.3 if letter == example.answer else 0.0
