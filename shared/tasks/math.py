"""Math word problems: GSM8K and SVAMP. The model ends with `Answer: <number>`."""

from __future__ import annotations

import random
from pathlib import Path

from shared.tasks.base import Example, Task
from shared.tasks.extract import extract_number, format_number, numbers_equal, parse_number
from shared.tasks.loading import (
    build_examples,
    find_file,
    load_hub_rows,
    load_local_rows,
    require,
    row_error,
)

MATH_INSTRUCTION = (
    "Solve the problem step by step. End with the final answer on its own line as "
    "'Answer: <number>'."
)


class MathTask(Task):
    """Strict score: an explicit answer equal to the gold number. Reward: 1.0 for that; partial
    credit below it for format compliance and numeric closeness (never reaching 1.0)."""

    max_new_tokens = 512

    def score(self, example: Example, completion: str) -> float:
        value, explicit = extract_number(completion)
        gold = float(example.answer)
        return 1.0 if explicit and value is not None and numbers_equal(value, gold) else 0.0

    def reward(self, example: Example, completion: str) -> float:
        if self.score(example, completion) == 1.0:
            return 1.0
        value, explicit = extract_number(completion)
        if value is None:
            return 0.0
        gold = float(example.answer)
        if not explicit:  # right number but not in the requested format
            return 0.5 if numbers_equal(value, gold) else 0.0
        closeness = max(0.0, 1.0 - abs(value - gold) / max(abs(gold), 1.0))
        return 0.1 + 0.1 * closeness  # format followed, wrong number: at most 0.2

    def format_ok(self, example: Example, completion: str) -> bool:
        value, explicit = extract_number(completion)
        return explicit and value is not None

    def prompt_text(self, question: str) -> str:
        return f"{question.strip()}\n{MATH_INSTRUCTION}"


class GSM8KTask(MathTask):
    name = "gsm8k"
    HUB = ("openai/gsm8k", "main")

    def __init__(self, data_dir: str | None = None, data_files: dict | str | None = None):
        self.data_dir, self.data_files = data_dir, data_files

    def _rows(self, split: str) -> tuple[list, str]:
        if self.data_files:
            path = self.data_files[split] if isinstance(self.data_files, dict) else self.data_files
            return load_local_rows(path), str(path)
        if self.data_dir:
            path = find_file(self.data_dir, [f"{split}.jsonl", f"gsm8k/{split}.jsonl"])
            return load_local_rows(path), str(path)
        return load_hub_rows(*self.HUB, split=split), f"{self.HUB[0]}:{split}"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        rows, source = self._rows(split)
        return build_examples(rows[:limit] if limit else rows, source, self._to_example)

    def _to_example(self, row, index: int, source: str) -> Example:
        question = require(row, "question", source, index)
        solution = require(row, "answer", source, index)
        if "####" not in solution:
            raise row_error(source, index, "field 'answer' has no '#### <number>' final answer")
        gold = parse_number(solution.rsplit("####", 1)[1])
        if gold is None:
            raise row_error(
                source, index, f"final answer {solution.rsplit('####', 1)[1]!r} is not a number"
            )
        return Example(
            uid=f"gsm8k-{index}",
            question=self.prompt_text(question),
            answer=format_number(gold),
            metadata={"solution": solution, "source": source, "row": index},
        )


class SVAMPTask(MathTask):
    """SVAMP has no official split: a seeded shuffle (`split_seed`, default 0) puts
    `test_size` (default 300) problems in `test` and the other 700 in `train`; `all` is every row."""

    name = "svamp"
    HUB = ("ChilleD/SVAMP", None)

    def __init__(
        self,
        data_dir: str | None = None,
        data_files: str | None = None,
        split_seed: int = 0,
        test_size: int = 300,
    ):
        self.data_dir, self.data_files = data_dir, data_files
        self.split_seed, self.test_size = split_seed, test_size

    def _all_rows(self) -> tuple[list, str]:
        if self.data_files or self.data_dir:
            path = (
                Path(self.data_files)
                if self.data_files
                else find_file(self.data_dir, ["SVAMP.json", "svamp/SVAMP.json"])
            )
            return load_local_rows(path), str(path)
        rows = load_hub_rows(*self.HUB, split="train") + load_hub_rows(*self.HUB, split="test")
        return rows, self.HUB[0]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test", "all"):
            raise ValueError(f"svamp split must be 'train', 'test' or 'all', got {split!r}")
        rows, source = self._all_rows()
        examples = build_examples(rows, source, self._to_example)
        order = list(range(len(examples)))
        random.Random(self.split_seed).shuffle(order)
        chosen = {"test": order[: self.test_size], "train": order[self.test_size :], "all": order}[
            split
        ]
        out = [examples[i] for i in sorted(chosen)]
        return out[:limit] if limit is not None else out

    def _to_example(self, row, index: int, source: str) -> Example:
        body = require(row, "Body", source, index)
        question = require(row, "Question", source, index)
        answer = require(row, "Answer", source, index, (int, float))
        return Example(
            uid=str(row.get("ID", f"svamp-{index}")),
            question=self.prompt_text(f"{body.strip()} {question.strip()}"),
            answer=format_number(float(answer)),
            metadata={"equation": row.get("Equation"), "type": row.get("Type"), "row": index},
        )
