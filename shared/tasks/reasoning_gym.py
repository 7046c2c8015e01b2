"""`task=reasoning_gym`: reasoning-gym's procedural generators as tasks (PyPI `reasoning-gym`,
the optional extra `pip install -e ".[tasks]"`; its data is bundled, nothing is downloaded).

`task.options.dataset=<name>` takes one generator (its options in `config`); `datasets={name:
weight, ...}` mixes several as reasoning-gym's `composite` does (options per name in
`configs`). Splits: `train` (`size` entries, seed `seed`), `validation` and `test`
(`test_size` entries each, seeds `seed + 10^9` and `seed + 2 * 10^9`: reasoning-gym seeds
entry i with `seed + i`, so the splits share no entry seed), minus any question that is also
in `train`. The prompt is the entry's question under reasoning-gym's own system prompt
(`system_prompt`, a key of `reasoning_gym.utils.SYSTEM_PROMPTS`, "default": think, then
`<answer>...</answer>`). The reward is the dataset's own `score_answer` of the `<answer>` text
(partial credit in [0, 1] where the generator gives it); the strict score is 1 when that is 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from shared.errors import UserError
from shared.tasks.base import Example, Task, strip_thinking

# reasoning-gym seeds entry i with `seed + i`: the splits' seeds lie far apart so that their
# entries never share a seed (and a question that repeats anyway is dropped from the others).
SPLIT_SEEDS = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
INSTALL = 'pip install -e ".[tasks]" (or pip install reasoning-gym==0.1.25)'


def _reasoning_gym():
    try:
        # optional dependency: the tasks extra
        import reasoning_gym
    except ImportError as err:
        raise UserError(
            f"task=reasoning_gym needs the reasoning-gym package, which is not installed: {INSTALL}"
        ) from err
    return reasoning_gym


class ReasoningGymTask(Task):
    name = "reasoning_gym"

    def __init__(
        self,
        dataset: str | None = None,
        config: Mapping | None = None,
        datasets: Mapping | None = None,
        configs: Mapping | None = None,
        size: int = 1000,
        test_size: int = 200,
        seed: int = 0,
        system_prompt: str | None = "default",
        max_new_tokens: int = 512,
    ):
        if (dataset is None) == (not datasets):
            raise UserError(
                "task=reasoning_gym needs task.options.dataset=<name> (one generator) or "
                "task.options.datasets={name: weight, ...} (a mix), not both"
            )
        if size < 1 or test_size < 1:
            raise UserError("task.options.size and task.options.test_size must be >= 1")
        rg = _reasoning_gym()
        # optional dependency: the tasks extra
        from reasoning_gym.factory import DATASETS

        # optional dependency: the tasks extra
        from reasoning_gym.utils import SYSTEM_PROMPTS

        weights = {dataset: 1.0} if dataset is not None else dict(datasets)
        options = {dataset: dict(config or {})} if dataset is not None else {}
        options.update({k: dict(v) for k, v in (configs or {}).items()})
        for name in list(weights) + list(options):
            if name not in DATASETS or name == "composite":
                close = difflib.get_close_matches(str(name), DATASETS, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UserError(
                    f"reasoning-gym has no dataset {name!r}{hint}; task.options.dataset takes "
                    f"one of its {len(DATASETS) - 1} generators (reasoning_gym.factory.DATASETS)"
                )
        for name, weight in weights.items():
            if not isinstance(weight, int | float) or weight <= 0:
                raise UserError(f"task.options.datasets.{name}={weight!r}: weights must be > 0")
        if system_prompt is not None and system_prompt not in SYSTEM_PROMPTS:
            raise UserError(
                f"task.options.system_prompt={system_prompt!r}: use one of "
                f"{', '.join(SYSTEM_PROMPTS)} (reasoning-gym's prompts), or null"
            )
        self.rg, self.weights, self.options = rg, weights, options
        self.size, self.test_size, self.seed = int(size), int(test_size), int(seed)
        self.system_prompt = SYSTEM_PROMPTS[system_prompt] if system_prompt else None
        self.max_new_tokens = int(max_new_tokens)
        self.label = dataset if dataset is not None else "mix"
        self._datasets: dict[str, Any] = {}
        self._examples: dict[str, list[Example]] = {}
        self._make("train", 2)  # a bad generator option fails now, in one line

    def _make(self, split: str, size: int):
        seed = self.seed + SPLIT_SEEDS[split]
        try:
            if not self._is_mix():
                (name,) = self.weights
                return self.rg.create_dataset(
                    name, size=size, seed=seed, **self.options.get(name, {})
                )
            # optional dependency: the tasks extra
            from reasoning_gym.composite import DatasetSpec

            specs = [
                DatasetSpec(n, float(w), self.options.get(n, {})) for n, w in self.weights.items()
            ]
            return self.rg.create_dataset("composite", size=size, seed=seed, datasets=specs)
        except (TypeError, ValueError, AssertionError) as err:
            raise UserError(
                f"reasoning-gym refused the options of {self.label} ({type(err).__name__}: "
                f"{err}); check task.options.config / configs against the generator's config class"
            ) from err

    def _is_mix(self) -> bool:
        return self.label == "mix"

    def _dataset(self, split: str):
        if split not in self._datasets:
            size = self.size if split == "train" else self.test_size
            self._datasets[split] = self._make(split, size)
        return self._datasets[split]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in SPLIT_SEEDS:
            raise UserError(
                f"task=reasoning_gym has splits train, validation and test, not {split!r}"
            )
        if split not in self._examples:
            entries = list(self._dataset(split))
            if split != "train":  # procedural generators can repeat a question across seeds
                seen = {ex.question for ex in self.examples("train")}
                entries = [e for e in entries if e["question"] not in seen]
            self._examples[split] = [
                Example(
                    uid=f"{e['metadata'].get('source_dataset', self.label)}-{split}-{i}",
                    question=e["question"],
                    answer="" if e.get("answer") is None else str(e["answer"]),
                    metadata={"entry": e, "data_source": e["metadata"].get("source_dataset")},
                )
                for i, e in enumerate(entries)
            ]
        out = self._examples[split]
        return out[:limit] if limit is not None else list(out)

    def _answer(self, completion: str) -> str | None:
        # optional dependency: the tasks extra
        from reasoning_gym.utils import extract_answer

        return extract_answer(strip_thinking(completion) or completion)

    def reward(self, example: Example, completion: str) -> float:
        """The generator's own `score_answer` of the `<answer>` text, in [0, 1]."""
        entry = example.metadata["entry"]
        return float(self._dataset("train").score_answer(self._answer(completion), entry))

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.reward(example, completion) == 1.0 else 0.0

    def format_ok(self, example: Example, completion: str) -> bool:
        return self._answer(completion) is not None
