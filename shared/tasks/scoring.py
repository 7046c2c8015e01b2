"""Rewards and the strict score of completions: the task's own, or functions by import path.

`task.rewards=[module:function, path/to/file.py:function, ...]` (weights `task.reward_weights`)
replaces the task's own reward by the weighted sum of the functions' values. Each function has
one of two shapes, told apart by its parameter names:

- TRL's (`GRPOTrainer(reward_funcs=...)`): `f(prompts, completions, completion_ids, **kwargs)
  -> list[float | None]`, called once per group of completions; `kwargs` holds `answer`, every
  other column of the task's data as a list, and `trainer_state` (`.global_step`). `None`
  skips this function for that completion. Parameters it does not name are not passed unless
  it takes `**kwargs`.
- verl's (`custom_reward_function`): `compute_score(data_source, solution_str, ground_truth,
  extra_info=None) -> float | dict`, called once per completion; a dict's `"score"` is the
  reward, its other numeric keys are logged.

Both may be `async def`. Each function's value must be a finite number in its range
(`task.reward_range`, or `task.reward_ranges[<name>]`); one that raises, times out, returns
NaN, infinity, a wrong type or a value out of range is counted and logged with the example's
id, and that completion gets `task.reward_fallback` for that function (the step goes on).
The strict score (accuracy, dynamic sampling, evaluation) is `task.score` (a function of either
shape returning 0 or 1), or else 1 when the weighted reward reaches its maximum; without
`task.rewards` it is the task's own `score`. User functions run in the processes of
`shared/tasks/reward_pool.py` (a per-call timeout), the task's own methods in this process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import shared.tasks as tasks  # load_task looked up per call (tests replace it)
from shared.errors import UserError
from shared.tasks.base import Example
from shared.tasks.entrypoints import EntryPointError, load_entry
from shared.tasks.reward_pool import RewardPool

logger = logging.getLogger("art.rewards")

TRL_SHAPE = "f(prompts, completions, completion_ids, **kwargs) -> list[float | None]"
VERL_SHAPE = "compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict"
TRL_ARGS = ("prompts", "completions", "completion_ids", "trainer_state", "answer")
VERL_ARGS = ("data_source", "solution_str", "ground_truth", "extra_info")
# Failure lines logged per function and batch (the rest are counted).
LOGGED_FAILURES = 3


def metric_name(name: str) -> str:
    """A name MLflow and Prometheus accept as part of a key (letters, digits, _ - .)."""
    return re.sub(r"[^\w\-.]", "_", str(name)) or "reward"


@dataclass(frozen=True)
class RewardFunction:
    """A reward (or strict score) function, loaded and checked."""

    spec: str  # its import path, as configured
    name: str  # its name in metrics: rewards/<name>/mean
    shape: str  # "trl" or "verl"
    weight: float = 1.0
    low: float = 0.0
    high: float = 1.0
    takes: tuple[str, ...] | None = None  # the keyword arguments it takes (None: **kwargs)

    def best(self) -> float:
        return self.high if self.weight >= 0 else self.low


def function_shape(fn, spec: str, what: str, columns: Sequence[str] | None) -> tuple:
    """(shape, the keywords it takes or None for **kwargs), or a one-line refusal."""
    if not callable(fn):
        raise EntryPointError(f"{what}: {spec} is a {type(fn).__name__}, not a function")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as err:
        raise EntryPointError(f"{what}: {spec} has no signature to check ({err})") from err
    shown = f"{spec}({', '.join(str(p) for p in params)})"
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    required = [
        p.name
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if any(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in params):
        required = ["<positional-only>"]
    if "solution_str" in names and "ground_truth" in names:
        shape, known = "verl", set(VERL_ARGS)
    elif "completions" in names or var_kw:
        shape, known = "trl", set(TRL_ARGS) | set(columns or ())
    else:
        shape, known = None, set()
    unknown = [r for r in required if r not in known]
    if shape is None or (unknown and (shape == "verl" or columns is not None)):
        if shape == "trl" and unknown:
            raise EntryPointError(
                f"{what}: {shown} needs {', '.join(map(repr, unknown))}, which the task does "
                f"not give (TRL's shape gets {', '.join(TRL_ARGS)} and the data's columns: "
                f"{', '.join(columns or ()) or 'none'})"
            )
        raise EntryPointError(
            f"{what}: {shown} fits neither reward shape: TRL's {TRL_SHAPE} or verl's "
            f"{VERL_SHAPE} (docs/tasks.md)"
        )
    return shape, None if var_kw else tuple(sorted(names))


def load_function(
    spec: str, what: str, columns: Sequence[str] | None, **settings
) -> tuple[RewardFunction, Any]:
    fn = load_entry(spec, what)
    shape, takes = function_shape(fn, spec, what, columns)
    name = metric_name(getattr(fn, "__name__", None) or spec.rpartition(":")[2])
    return RewardFunction(spec, name, shape, takes=takes, **settings), fn


@dataclass
class Scores:
    """One batch of completions, scored."""

    rewards: list[float]  # the weighted reward per completion (fallbacks included)
    accuracies: list[float]  # the strict score, 0 or 1
    values: dict[str, list[float | None]]  # each function's value (None: skipped or failed)
    extras: dict[str, list[float]] = field(default_factory=dict)  # verl's other dict keys
    failures: dict[str, int] = field(default_factory=dict)  # failed calls per function
    failed: list[bool] = field(default_factory=list)  # completions with any failure
    failed_at: set[tuple[str, int]] = field(default_factory=set)  # (function, completion)


def task_reward_function(task, low: float, high: float) -> RewardFunction:
    return RewardFunction(f"task:{task.name}", metric_name(task.name), "task", 1.0, low, high)


class Scorer:
    """The one door to rewards: the task's own methods (in this process), or reward
    functions by import path (in a pool of processes, `processes=0`: in this one)."""

    def __init__(
        self,
        task,
        functions: list[tuple[RewardFunction, Any]],
        score_function: tuple[RewardFunction, Any] | None = None,
        fallback: float | None = None,
        timeout_s: float = 30.0,
        processes: int = 2,
        low: float = 0.0,
        high: float = 1.0,
    ):
        self.task, self.fallback = task, fallback
        self.own = not functions  # the task's own reward
        self.functions = [f for f, _ in functions] or [task_reward_function(task, low, high)]
        self.callables = [c for _, c in functions]
        self.score_function = score_function[0] if score_function else None
        if score_function:
            self.callables.append(score_function[1])
        self.timeout_s, self.processes = timeout_s, processes
        self.pool = None
        self.loop = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]

    @property
    def user_functions(self) -> list[RewardFunction]:
        return ([] if self.own else self.functions) + (
            [self.score_function] if self.score_function else []
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # ---- scoring -----------------------------------------------------------------------
    def score(
        self,
        examples: Sequence[Example],
        texts: Sequence[str],
        token_ids: Sequence[Sequence[int]] | None = None,
        step: int = 0,
        group_size: int = 1,
    ) -> Scores:
        """Rewards and strict scores of completions `texts` (of `examples`, one per text)."""
        n = len(texts)
        token_ids = token_ids if token_ids is not None else [()] * n
        values: dict[str, list[float | None]] = {f.name: [None] * n for f in self.functions}
        out = Scores([0.0] * n, [0.0] * n, values, failed=[False] * n)
        failures: list[tuple[str, str, str]] = []  # (function, example id, problem)
        if self.own:
            self._own(examples, texts, out, failures)
        user = self.user_functions
        if user:
            calls, owners = [], []
            for index, fn in enumerate(user):
                for chunk, kwargs in self._calls(fn, examples, texts, token_ids, step, group_size):
                    calls.append((index, kwargs))
                    owners.append((fn, chunk))
            outcomes = self._run(calls)
            for (fn, chunk), outcome in zip(owners, outcomes, strict=True):
                self._take(fn, chunk, outcome, examples, out, failures)
        self._combine(out)
        self._report(failures, out)
        return out

    def _own(self, examples, texts, out: Scores, failures) -> None:
        """The task's own reward and score, in this process."""
        (fn,) = self.functions
        for i, (ex, text) in enumerate(zip(examples, texts, strict=True)):
            try:
                reward, accuracy = self.task.reward(ex, text), self.task.score(ex, text)
                problem = _problem(reward, fn) or _problem(accuracy, None, strict=True)
            except Exception as err:
                problem = f"raised {type(err).__name__}: {str(err)[:200]}"
            if problem:
                self._fail(fn, i, ex, problem, out, failures)
                continue
            out.values[fn.name][i] = float(reward)
            out.accuracies[i] = float(accuracy)

    def _calls(self, fn: RewardFunction, examples, texts, token_ids, step, group_size):
        """(sample indices, keyword arguments) per call of `fn`."""
        n = len(texts)
        if fn.shape == "verl":
            for i in range(n):
                ex = examples[i]
                meta = ex.metadata
                extra = (
                    meta.get("extra_info") if isinstance(meta.get("extra_info"), Mapping) else None
                )
                kwargs = {
                    "data_source": meta.get("data_source") or self.task.name,
                    "solution_str": texts[i],
                    "ground_truth": ex.answer,
                    "extra_info": dict(extra)
                    if extra is not None
                    else {**meta, "id": ex.uid, "question": ex.question},
                }
                yield [i], _only(kwargs, fn.takes)
            return
        size = max(int(group_size), 1)
        for first in range(0, n, size):
            chunk = list(range(first, min(first + size, n)))
            chunk_examples = [examples[i] for i in chunk]
            columns = sorted({k for ex in chunk_examples for k in ex.metadata} - {"answer"})
            kwargs = {
                "prompts": [ex.question for ex in chunk_examples],
                "completions": [texts[i] for i in chunk],
                "completion_ids": [list(token_ids[i]) for i in chunk],
                "trainer_state": SimpleNamespace(global_step=step),
                "answer": [ex.answer for ex in chunk_examples],
                **{c: [ex.metadata.get(c) for ex in chunk_examples] for c in columns},
            }
            yield chunk, _only(kwargs, fn.takes)

    def _run(self, calls: list[tuple[int, dict]]) -> list[tuple[str, Any]]:
        if self.processes == 0:  # in this process: no timeout
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            outcomes = []
            for index, kwargs in calls:
                try:
                    result = self.callables[index](**kwargs)
                    if inspect.isawaitable(result):
                        result = self.loop.run_until_complete(result)
                    outcomes.append(("ok", result))
                except Exception as err:
                    outcomes.append(("error", f"{type(err).__name__}: {str(err)[:200]}"))
            return outcomes
        if self.pool is None:
            self.pool = RewardPool(
                [f.spec for f in self.user_functions], self.processes, self.timeout_s
            )
        return self.pool.run(calls)

    def _take(self, fn: RewardFunction, chunk, outcome, examples, out: Scores, failures) -> None:
        """One call's outcome into per-completion values (or failures)."""
        status, value = outcome
        if status != "ok":
            for i in chunk:
                self._fail(
                    fn,
                    i,
                    examples[i],
                    "timed out: " + str(value) if status == "timeout" else "raised " + str(value),
                    out,
                    failures,
                )
            return
        if fn.shape == "trl":
            if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence | _Array):
                problem = f"returned {type(value).__name__}, not a list of {len(chunk)} values"
            elif len(value) != len(chunk):
                problem = f"returned {len(value)} values for {len(chunk)} completions"
            else:
                for i, v in zip(chunk, list(value), strict=True):
                    self._value(fn, i, examples[i], v, out, failures)
                return
            for i in chunk:
                self._fail(fn, i, examples[i], problem, out, failures)
            return
        (i,) = chunk
        if isinstance(value, Mapping):
            if "score" not in value:
                self._fail(
                    fn,
                    i,
                    examples[i],
                    f"returned a dict without 'score' (keys {sorted(value)[:8]})",
                    out,
                    failures,
                )
                return
            for key, extra in value.items():
                if key != "score" and _number(extra) and math.isfinite(float(extra)):
                    out.extras.setdefault(f"{fn.name}/{metric_name(key)}", []).append(float(extra))
            value = value["score"]
        self._value(fn, i, examples[i], value, out, failures)

    def _value(self, fn: RewardFunction, i: int, example, value, out: Scores, failures) -> None:
        strict = fn is self.score_function
        if value is None and fn.shape == "trl" and not strict:
            return  # TRL: this function does not score this completion
        problem = _problem(value, None if strict else fn, strict)
        if problem:
            self._fail(fn, i, example, problem, out, failures)
        elif strict:
            out.accuracies[i] = float(value)
        else:
            out.values[fn.name][i] = float(value)

    def _fail(
        self, fn: RewardFunction, i: int, example, problem: str, out: Scores, failures
    ) -> None:
        out.failed[i] = True
        out.failed_at.add((fn.name, i))
        out.failures[fn.name] = out.failures.get(fn.name, 0) + 1
        failures.append((fn.name, example.uid, problem))

    def _combine(self, out: Scores) -> None:
        """The weighted reward (a failed function counts its fallback) and, without a strict
        score function, the accuracy: 1 where every rewarding function reaches its maximum
        (penalties, functions whose best is 0 or below, are left out: a length penalty never
        reaches 0, and would make every completion wrong)."""
        for i in range(len(out.rewards)):
            total, best, scored, rewarding, rewarding_best = 0.0, 0.0, 0, 0.0, 0.0
            for fn in self.functions:
                v = out.values[fn.name][i]
                if v is None:
                    if (fn.name, i) not in out.failed_at:
                        continue  # TRL's None: this function does not score this completion
                    v = self.fallback if self.fallback is not None else fn.low
                total += fn.weight * v
                best += fn.weight * fn.best()
                scored += 1
                if fn.weight * fn.best() > 0:  # a penalty (at best 0: a length cost) does not count
                    rewarding += fn.weight * v
                    rewarding_best += fn.weight * fn.best()
            out.rewards[i] = total
            if self.own or self.score_function is not None:
                if out.failed[i]:
                    out.accuracies[i] = 0.0
                continue
            if rewarding_best > 0:  # the strict score asks the rewarding functions only
                total, best = rewarding, rewarding_best
            reached = scored and not out.failed[i] and total >= best - 1e-9 * max(1.0, abs(best))
            out.accuracies[i] = 1.0 if reached else 0.0

    def _report(self, failures, out: Scores) -> None:
        by_function: dict[str, list[tuple[str, str]]] = {}
        for name, uid, problem in failures:
            by_function.setdefault(name, []).append((uid, problem))
        for name, items in by_function.items():
            fallback = self.fallback if self.fallback is not None else "its range's minimum"
            for uid, problem in items[:LOGGED_FAILURES]:
                logger.warning(
                    "reward %s failed on example %s: %s; that completion gets %s "
                    "(task.reward_fallback)", name, uid, problem, fallback,
                )  # fmt: skip
            if len(items) > LOGGED_FAILURES:
                logger.warning(
                    "reward %s failed on %d more completions of this batch",
                    name,
                    len(items) - LOGGED_FAILURES,
                )


try:  # numpy arrays count as a list of values where numpy is installed
    import numpy as _np

    _Array = _np.ndarray
except ImportError:  # pragma: no cover
    _Array = tuple


def _only(kwargs: dict, takes: tuple[str, ...] | None) -> dict:
    return kwargs if takes is None else {k: v for k, v in kwargs.items() if k in takes}


def _number(value) -> bool:
    return isinstance(value, numbers.Real) or (
        hasattr(value, "dtype") and getattr(value, "shape", None) == ()
    )


def _problem(value, fn: RewardFunction | None, strict: bool = False) -> str | None:
    """Why `value` is no valid reward (or strict score), or None."""
    if not _number(value):
        return f"returned {type(value).__name__} {str(value)[:40]!r}, not a number"
    v = float(value)
    if not math.isfinite(v):
        return f"returned {v}, not a finite number"
    if strict and v not in (0.0, 1.0):
        return f"returned {v} as a strict score, which must be 0 or 1"
    if fn is not None and not (fn.low - 1e-9 <= v <= fn.high + 1e-9):
        return f"returned {v}, outside its range [{fn.low:g}, {fn.high:g}] (task.reward_range / task.reward_ranges)"
    return None


def build_scorer(task_cfg, task, columns: Sequence[str] | None = None) -> Scorer:
    """The scorer a task config asks for (`task.rewards`, `task.score`, ...), every function
    imported and its signature checked now (`columns`: the data's columns, when known)."""

    rewards = list(task_cfg.rewards or [])
    weights = task_cfg.reward_weights
    weights = [float(w) for w in weights] if weights is not None else [1.0] * len(rewards)
    low, high = (float(x) for x in task_cfg.reward_range)
    ranges = {k: [float(x) for x in v] for k, v in (task_cfg.reward_ranges or {}).items()}
    functions, names = [], set()
    for spec, weight in zip(rewards, weights, strict=True):
        fn, call = load_function(spec, "task.rewards", columns, weight=weight, low=low, high=high)
        name, k = fn.name, 2
        while name in names:  # two functions of the same name: reward, reward_2, ...
            name, k = f"{fn.name}_{k}", k + 1
        names.add(name)
        fn_low, fn_high = ranges.get(name, (low, high))
        functions.append((replace(fn, name=name, low=fn_low, high=fn_high), call))
    unknown = sorted(set(ranges) - names)
    if unknown:
        raise UserError(
            f"task.reward_ranges names {', '.join(unknown)}, which is no reward function of "
            f"task.rewards (their names: {', '.join(sorted(names)) or 'none'})"
        )
    score = None
    if task_cfg.score:
        score = load_function(task_cfg.score, "task.score", columns, low=0.0, high=1.0)
    return Scorer(
        task,
        functions,
        score,
        fallback=task_cfg.reward_fallback,
        timeout_s=float(task_cfg.reward_timeout_s),
        processes=int(task_cfg.reward_processes),
        low=low,
        high=high,
    )


def as_scorer(task_or_scorer) -> Scorer:
    """A Scorer as is; a plain task scored by its own methods, in this process."""
    if isinstance(task_or_scorer, Scorer):
        return task_or_scorer
    return Scorer(task_or_scorer, [], processes=0)


def data_columns(examples: Sequence[Example], look_at: int = 1000) -> list[str]:
    """The metadata columns of a task's examples (what TRL-shaped functions may ask for)."""
    return sorted({k for ex in examples[:look_at] for k in ex.metadata})


def open_task(task_cfg, split: str, limit: int | None = None):
    """The configured task through the one door: (task, its examples of `split`, Scorer).
    The task's class, options, data and every reward entry point are checked here, before
    any process starts; a task's own system prompt fills `task.system_prompt` when null."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import OmegaConf, open_dict

    options = task_cfg.options
    options = (
        OmegaConf.to_container(options, resolve=True)
        if OmegaConf.is_config(options)
        else dict(options or {})
    )
    task = tasks.load_task(task_cfg.name, **options)
    examples = task.examples(split, limit)
    scorer = build_scorer(task_cfg, task, data_columns(examples))
    if task_cfg.system_prompt is None and getattr(task, "system_prompt", None):
        if OmegaConf.is_config(task_cfg):
            with open_dict(task_cfg):
                task_cfg.system_prompt = task.system_prompt
        else:
            task_cfg.system_prompt = task.system_prompt
    return task, examples, scorer


def check_task_config(task_cfg) -> None:
    """The task's entry points checked without loading its data (art-submit, before the job
    is sent): the task class imports and takes the options, every reward and score function
    imports and has a shape."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import OmegaConf

    options = task_cfg.options
    options = (
        OmegaConf.to_container(options, resolve=True)
        if OmegaConf.is_config(options)
        else dict(options or {})
    )
    tasks.check_options(tasks.load_task_class(task_cfg.name), task_cfg.name, options)
    for spec in task_cfg.rewards or []:
        load_function(spec, "task.rewards", None)
    if task_cfg.score:
        load_function(task_cfg.score, "task.score", None)
