"""GPQA: graduate-level multiple choice. Options are shuffled per example with a seeded
permutation; the model answers `The correct answer is (X)`."""

from __future__ import annotations

import random
import re

from shared.errors import UserError
from shared.tasks.base import Example, Task
from shared.tasks.extract import extract_choice
from shared.tasks.loading import build_examples, load_hub_rows, load_local_rows, require

GPQA_INSTRUCTION = (
    "Think step by step, then end with 'The correct answer is (X)' where X is one of A, B, C, D."
)
LETTERS = "ABCD"


class GPQATask(Task):
    """GPQA with disjoint train and test items.

    Default: test = `gpqa_diamond` (198 items), train = `gpqa_main` minus every item of the
    test set, matched by question text (whitespace-normalized). A configuration in which the
    train items would still include a test item fails with the reason. Offline: `train_files`
    and `test_files` (csv/jsonl/json/parquet with the hub's columns).
    """

    name = "gpqa"
    max_new_tokens = 512
    HUB = "Idavidrein/gpqa"

    def __init__(
        self,
        train_config: str = "gpqa_main",
        test_config: str = "gpqa_diamond",
        train_files: str | None = None,
        test_files: str | None = None,
        seed: int = 0,
    ):
        self.train_config, self.test_config = train_config, test_config
        self.train_files, self.test_files, self.seed = train_files, test_files, seed

    def _rows(self, config: str, files: str | None) -> tuple[list, str]:
        if files:
            return load_local_rows(files), str(files)
        return load_hub_rows(self.HUB, config, "train", gated=True), f"{self.HUB}:{config}"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(f"gpqa split must be 'train' or 'test', got {split!r}")
        test_rows, test_source = self._rows(self.test_config, self.test_files)
        test = build_examples(test_rows, test_source, self._to_example)
        if split == "train":
            train_rows, train_source = self._rows(self.train_config, self.train_files)
            held_out = {_question_key(ex) for ex in test}
            all_train = build_examples(train_rows, train_source, self._to_example)
            train = [ex for ex in all_train if _question_key(ex) not in held_out]
            if not train:
                raise UserError(
                    f"every GPQA training item ({train_source}) is also a test item "
                    f"({test_source}): training would evaluate on what it trained on; use "
                    "task.options.train_config=gpqa_main (minus the test items) or another "
                    "train_files"
                )
            out = train
        else:
            out = test
        return out[:limit] if limit is not None else out

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
            metadata={"options": shuffled, "row": index, "question": question},
        )

    def gold_completion(self, example: Example) -> str:
        if "completion" in example.metadata:
            return str(example.metadata["completion"])
        return f"The correct answer is ({example.answer})"

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


def _question_key(example: Example) -> str:
    return re.sub(r"\s+", " ", example.metadata["question"]).strip().lower()
