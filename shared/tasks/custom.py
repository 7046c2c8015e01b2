"""`task=custom`: your own data from local files (JSONL, JSON, CSV, Parquet) or a hub dataset.

A field mapping says which column is the question, the answer and the id; every other
column goes to `Example.metadata` (and to reward functions: docs/tasks.md). An optional
`prompt_template` (Python `str.format` over the row's columns, `{question}` the question
field) builds the prompt. The splits are the files given per split (`data_files={train: ...,
test: ...}`, or the hub's), or a seeded split of one file (`test_size`, `split_seed`).

Without reward functions (`task.rewards`), the strict score and the reward are an exact match:
the completion, without thinking, surrounding whitespace and a final period, equals the answer.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import UserError
from shared.tasks.base import Example, Task, strip_thinking
from shared.tasks.entrypoints import resolve_path
from shared.tasks.loading import load_hub_rows, load_local_rows, row_error

SCALAR = (str, int, float, bool)
logger = logging.getLogger("art.tasks")


def field_value(row: Mapping, name: str) -> Any:
    """`row[name]`, where a dotted name reaches into nested objects (`reward_model.ground_truth`);
    KeyError when absent."""
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


class _Fields(dict):
    """The row's columns for `str.format_map`; a name it lacks raises KeyError(name)."""

    def __missing__(self, key: str):
        raise KeyError(key)


class CustomTask(Task):
    name = "custom"

    def __init__(
        self,
        data_files: str | Mapping | None = None,
        hub: str | None = None,
        hub_config: str | None = None,
        hub_split: str | Mapping | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        id_field: str | None = None,
        prompt_template: str | None = None,
        test_size: float = 0.1,
        split_seed: int = 0,
        max_new_tokens: int = 256,
    ):
        if (data_files is None) == (hub is None):
            raise UserError(
                "task=custom needs its data: set task.options.data_files=<file.jsonl|.csv|"
                ".parquet, or {train: file, test: file}> or task.options.hub=<dataset id> "
                "(one of them)"
            )
        if prompt_template is not None:
            try:
                list(string.Formatter().parse(prompt_template))
            except ValueError as err:
                raise UserError(
                    f"task.options.prompt_template={prompt_template!r} is not a format string "
                    f"({err}); name columns as {{question}}, write literal braces as {{{{ }}}}"
                ) from err
        if not (0 < test_size < 1 or (test_size >= 1 and float(test_size).is_integer())):
            raise UserError(
                f"task.options.test_size={test_size}: give a fraction in (0, 1) or a row count"
            )
        if max_new_tokens < 1:
            raise UserError(f"task.options.max_new_tokens={max_new_tokens}: set >= 1")
        self.data_files, self.hub, self.hub_config = data_files, hub, hub_config
        self.hub_split = hub_split
        self.question_field, self.answer_field, self.id_field = (
            question_field,
            answer_field,
            id_field,
        )
        self.prompt_template, self.test_size, self.split_seed = (
            prompt_template,
            test_size,
            split_seed,
        )
        self.max_new_tokens = int(max_new_tokens)
        self._cache: dict[str, list[Example]] = {}

    # ---- splits ------------------------------------------------------------------------
    def _given_splits(self) -> Mapping | None:
        """{split: file or hub split} when the splits are given, None for a seeded split."""
        if self.data_files is not None:
            return self.data_files if isinstance(self.data_files, Mapping) else None
        if isinstance(self.hub_split, Mapping):
            return self.hub_split
        return None if self.hub_split else {"train": "train", "test": "test"}

    def _load(self, where: str) -> list[Example]:
        """Every example of one file or hub split (validated row by row, cached)."""
        if where not in self._cache:
            if self.data_files is not None:
                path = resolve_path(where)
                rows, source = load_local_rows(path), str(path)
            else:
                rows = load_hub_rows(self.hub, self.hub_config, where)
                source = f"{self.hub}:{where}"
            stem = Path(str(where)).stem if self.data_files is not None else where
            examples, seen = [], {}
            for index, row in enumerate(rows):
                example = self._to_example(row, index, source, stem)
                if example.uid in seen:
                    raise row_error(
                        source,
                        index,
                        f"id {example.uid!r} repeats row {seen[example.uid]}; ids must be "
                        f"unique (task.options.id_field={self.id_field})",
                    )
                seen[example.uid] = index
                examples.append(example)
            self._cache[where] = examples
            logger.info("task=custom: %d examples from %s", len(examples), source)
        return self._cache[where]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        given = self._given_splits()
        if given is not None:
            if split not in given:
                raise UserError(
                    f"task=custom has no split {split!r}: its splits are {', '.join(given)} "
                    "(task.options.data_files / hub_split); set task.split or eval.split"
                )
            out = self._load(str(given[split]))
        else:
            if split not in ("train", "test", "all"):
                raise UserError(
                    f"task=custom splits one file into train and test (task.options.test_size); "
                    f"split {split!r} does not exist: use train, test or all"
                )
            where = self.data_files if self.data_files is not None else self.hub_split
            examples = self._load(str(where))
            order = list(range(len(examples)))
            random.Random(self.split_seed).shuffle(order)
            size = self.test_size if self.test_size >= 1 else round(self.test_size * len(order))
            size = min(max(int(size), 1), len(order) - 1) if len(order) > 1 else 0
            chosen = {"test": order[:size], "train": order[size:], "all": order}[split]
            out = [examples[i] for i in sorted(chosen)]
        return out[:limit] if limit is not None else list(out)

    # ---- rows --------------------------------------------------------------------------
    def _to_example(self, row: Any, index: int, source: str, stem: str) -> Example:
        if not isinstance(row, Mapping):
            raise row_error(source, index, f"expected an object, got {type(row).__name__}")
        question = self._field(row, self.question_field, "question_field", source, index)
        if not isinstance(question, str):
            raise row_error(
                source,
                index,
                f"question field {self.question_field!r} should be text, got "
                f"{type(question).__name__}",
            )
        answer = self._field(row, self.answer_field, "answer_field", source, index)
        if not isinstance(answer, SCALAR):
            raise row_error(
                source,
                index,
                f"answer field {self.answer_field!r} should be text or a number, got "
                f"{type(answer).__name__} (structured data can stay in other columns)",
            )
        uid = (
            str(self._field(row, self.id_field, "id_field", source, index))
            if self.id_field
            else f"{stem}-{index}"
        )
        text = question
        if self.prompt_template is not None:
            try:
                text = self.prompt_template.format_map(_Fields(row, question=question))
            except KeyError as err:
                raise row_error(
                    source,
                    index,
                    f"task.options.prompt_template names {{{err.args[0]}}}, which the row does "
                    f"not have (has {sorted(row)})",
                ) from err
            except (ValueError, IndexError, AttributeError) as err:
                raise UserError(
                    f"task.options.prompt_template={self.prompt_template!r} cannot be filled "
                    f"({err}); name columns as {{question}}, write literal braces as {{{{ }}}}"
                ) from err
        metadata = {k: v for k, v in row.items() if k != self.question_field}
        return Example(uid=uid, question=text, answer=str(answer), metadata=metadata)

    @staticmethod
    def _field(row: Mapping, name: str, option: str, source: str, index: int) -> Any:
        try:
            value = field_value(row, name)
        except KeyError:
            value = None
        if value is None:
            raise row_error(
                source,
                index,
                f"missing field {name!r} (has {sorted(row)}); map it with task.options.{option}",
            )
        return value

    # ---- scoring without reward functions ----------------------------------------------
    def score(self, example: Example, completion: str) -> float:
        return 1.0 if _normalize(strip_thinking(completion)) == _normalize(example.answer) else 0.0

    def format_ok(self, example: Example, completion: str) -> bool:
        return bool(strip_thinking(completion).strip())


def _normalize(text: str) -> str:
    return text.strip().rstrip(".").strip()
