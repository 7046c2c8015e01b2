"""Math word problems: GSM8K and SVAMP. The model ends with `Answer: <number>`."""

from __future__ import annotations

import random
import re
from pathlib import Path

from shared.errors import UserError
from shared.tasks.base import Example, Task, strip_thinking
from shared.tasks.extract import (
    extract_number,
    format_number,
    numbers_equal,
    paper_exact_match,
    paper_extract,
    paper_numeric_reward,
    paper_relative_error,
    parse_number,
)
from shared.tasks.loading import (
    build_examples,
    find_file,
    load_hub_rows,
    load_local_rows,
    require,
    row_error,
)

# The paper's prompt suffix, exactly (github.com/jinymusim/ART, datasets/gsm8k.py).
ANSWER_SUFFIX = "\n\nEnd your response with: Answer: <number>"
SCORINGS = ("paper", "lenient")


class MathTask(Task):
    """GSM8K and SVAMP as in the paper's released evaluation code.

    Prompt: the question followed by exactly `ANSWER_SUFFIX`. Strict score (`scoring="paper"`,
    the default): the paper's `extract_numeric(format="Answer:")` + `exact_match`; reward: the
    paper's `numeric_reward` (1.0 / 0.4 / 0.2 / 0.1 / 0.01 / 0). `scoring="lenient"` accepts
    more answer forms (`The answer is`, `\\boxed{}`, `####`, fractions) with a simpler reward.
    """

    max_new_tokens = 512

    def __init__(self, scoring: str = "paper"):
        if scoring not in SCORINGS:
            raise UserError(f"scoring={scoring!r}: use one of {', '.join(SCORINGS)}")
        self.scoring = scoring

    def score(self, example: Example, completion: str) -> float:
        text = strip_thinking(completion)
        if self.scoring == "paper":
            predicted = paper_extract(text)
            return (
                1.0
                if predicted is not None and paper_exact_match(predicted, example.answer)
                else 0.0
            )
        value, explicit = extract_number(text)
        gold = float(example.answer)
        return 1.0 if explicit and value is not None and numbers_equal(value, gold) else 0.0

    def reward(self, example: Example, completion: str) -> float:
        if self.scoring == "paper":
            return paper_numeric_reward(strip_thinking(completion), example.answer)
        if self.score(example, completion) == 1.0:
            return 1.0
        value, explicit = extract_number(completion)
        if value is None:
            return 0.0
        if not explicit:
            return 0.01
        closeness = max(
            0.0, 1.0 - abs(value - float(example.answer)) / max(abs(float(example.answer)), 1.0)
        )
        return 0.1 + 0.1 * closeness  # format followed, wrong number: at most 0.2

    def format_ok(self, example: Example, completion: str) -> bool:
        """Whether the completion ends with a parsable `Answer: <number>`, right or wrong."""
        text = strip_thinking(completion)
        if self.scoring == "paper":
            predicted = paper_extract(text)
            return bool(predicted) and paper_relative_error(predicted, "1") is not None
        value, explicit = extract_number(text)
        return explicit and value is not None

    @staticmethod
    def prompt_text(question: str) -> str:
        return question + ANSWER_SUFFIX

    def gold_completion(self, example: Example) -> str:
        """The data's completion, else the worked solution where the dataset has one (GSM8K's,
        calculator annotations `<<...>>` removed), ending with `Answer: <number>` as asked."""
        if "completion" in example.metadata:
            return str(example.metadata["completion"])
        solution = str(example.metadata.get("solution") or "").rsplit("####", 1)[0]
        reasoning = re.sub(r"<<[^>]*>>", "", solution).strip()
        answer = f"Answer: {example.answer}"
        return f"{reasoning}\n{answer}" if reasoning else answer


class GSM8KTask(MathTask):
    name = "gsm8k"
    HUB = ("openai/gsm8k", "main")

    def __init__(
        self,
        data_dir: str | None = None,
        data_files: dict | str | None = None,
        scoring: str = "paper",
    ):
        super().__init__(scoring)
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
            question=self.prompt_text(question),  # the dataset's question, as is
            answer=format_number(gold),
            metadata={"solution": solution, "source": source, "row": index},
        )


class SVAMPTask(MathTask):
    """SVAMP. From the hub: `ChilleD/SVAMP`'s own splits (train 700 / test 300), as the paper.
    From the original 1000-row `SVAMP.json` (offline), which has no split: a seeded shuffle
    (`random.Random(split_seed).shuffle` of the row order, default seed 0) puts the first
    `test_size` (default 300) rows in `test` and the other 700 in `train`; `all` is every row.
    The prompt is `Body + " " + Question` followed by the answer suffix."""

    name = "svamp"
    HUB = ("ChilleD/SVAMP", None)

    def __init__(
        self,
        data_dir: str | None = None,
        data_files: str | None = None,
        split_seed: int = 0,
        test_size: int = 300,
        scoring: str = "paper",
    ):
        super().__init__(scoring)
        self.data_dir, self.data_files = data_dir, data_files
        self.split_seed, self.test_size = split_seed, test_size

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test", "all"):
            raise UserError(f"svamp split must be 'train', 'test' or 'all', got {split!r}")
        if not (self.data_files or self.data_dir):  # the hub's own split
            splits = ("train", "test") if split == "all" else (split,)
            rows = [r for s in splits for r in load_hub_rows(*self.HUB, split=s)]
            out = build_examples(rows, self.HUB[0], self._to_example)
            return out[:limit] if limit is not None else out
        path = (
            Path(self.data_files)
            if self.data_files
            else find_file(self.data_dir, ["SVAMP.json", "svamp/SVAMP.json"])
        )
        examples = build_examples(load_local_rows(path), str(path), self._to_example)
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
            question=self.prompt_text(f"{body.strip()} {question.strip()}".strip()),
            answer=format_number(float(answer)),
            metadata={"equation": row.get("Equation"), "type": row.get("Type"), "row": index},
        )
