"""Rewards by import path: both shapes, the checks, failures and the per-call timeout."""

import logging
import math
import time
from types import SimpleNamespace

import pytest

from shared.errors import UserError
from shared.tasks import Example, load_task
from shared.tasks.scoring import Scorer, build_scorer, function_shape

REWARDS = """
import asyncio, math, os, time

def letter(completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def by_topic(prompts, completions, topic):
    return [None if t == "skip" else 0.5 for t in topic]

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    behaviour = {"boom": lambda: {}["key"], "nan": lambda: math.nan, "inf": lambda: math.inf,
                 "big": lambda: 5.0, "text": lambda: "1", "nodict": lambda: {"acc": 1.0},
                 "hang": lambda: time.sleep(60), "die": lambda: os._exit(3)}
    if solution_str in behaviour:
        return behaviour[solution_str]()
    return {"score": float(solution_str == ground_truth), "length": len(solution_str)}

async def slow_half(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    return [0.5] * len(completions)

def short(completions, **kwargs):
    return [0.0]

def exact(data_source, solution_str, ground_truth, extra_info=None):
    return solution_str == ground_truth

def two(x, y):
    return 1.0

def needs_solution(completions, solution):
    return [0.0] * len(completions)
"""


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "rw.py"
    path.write_text(REWARDS)
    return str(path)


def cfg(rewards_file, names, **kw):
    base = dict(
        rewards=[f"{rewards_file}:{n}" for n in names],
        reward_weights=None,
        reward_range=[0.0, 1.0],
        reward_ranges={},
        score=None,
        reward_fallback=None,
        reward_timeout_s=30.0,
        reward_processes=0,
    )
    return SimpleNamespace(**{**base, **kw})


EXAMPLES = [
    Example("a", "Letter?", "F", {"topic": "x"}),
    Example("b", "Letter?", "C", {"topic": "skip"}),
]
TASK = load_task("synthetic")


def test_the_shape_comes_from_the_signature(rewards):
    from shared.tasks.entrypoints import load_entry

    def shape(name, columns=("topic",)):
        return function_shape(load_entry(f"{rewards}:{name}", "t"), name, "t", columns)[0]

    assert shape("letter") == "trl" and shape("compute_score") == "verl"
    assert shape("slow_half") == "trl" and shape("by_topic") == "trl"
    with pytest.raises(UserError, match=r"two\(x, y\) fits neither reward shape: TRL's f\(prompts"):
        shape("two")
    with pytest.raises(UserError, match="needs 'solution', which the task does not give"):
        shape("needs_solution")
    assert shape("needs_solution", columns=None) == "trl"  # columns unknown (art-submit)


def test_weighted_functions_skips_extras_and_the_strict_score(rewards):
    scorer = build_scorer(
        cfg(rewards, ["letter", "by_topic", "compute_score"], reward_weights=[1.0, 2.0, 0.5]),
        TASK,
        ["topic"],
    )
    assert scorer.names == ["letter", "by_topic", "compute_score"]
    examples = [EXAMPLES[0], EXAMPLES[0], EXAMPLES[1], EXAMPLES[1]]
    out = scorer.score(examples, ["F", "G", "C", "x"], [[1], [2], [3], [4]], group_size=2)
    assert out.values["letter"] == [1.0, 0.0, 1.0, 0.0]
    assert out.values["by_topic"] == [0.5, 0.5, None, None]  # None: not scored by it
    assert out.values["compute_score"] == [1.0, 0.0, 1.0, 0.0]
    assert out.rewards == [2.5, 1.0, 1.5, 0.0]
    # default strict score: the reward reaches its maximum among the functions that scored
    assert out.accuracies == [0.0, 0.0, 1.0, 0.0]  # by_topic's max is 1, it gave 0.5
    assert out.extras["compute_score/length"] == [1.0, 1.0, 1.0, 1.0]
    assert not any(out.failed)
    strict = build_scorer(cfg(rewards, ["letter", "by_topic"], score=f"{rewards}:exact"), TASK)
    assert strict.score(examples, ["F", "G", "C", "x"]).accuracies == [1.0, 0.0, 1.0, 0.0]


def test_failures_get_the_fallback_and_name_the_example(rewards, caplog, monkeypatch):
    import shared.tasks.scoring

    caplog.set_level(logging.WARNING, "art.rewards")
    monkeypatch.setattr(shared.tasks.scoring, "LOGGED_FAILURES", 5)
    scorer = build_scorer(cfg(rewards, ["letter", "compute_score"], reward_fallback=-1.0), TASK)
    texts = ["boom", "nan", "inf", "big", "text", "nodict", "F"]
    out = scorer.score([EXAMPLES[0]] * len(texts), texts)
    assert out.failures == {"compute_score": 6}
    assert out.failed == [True] * 6 + [False]
    assert out.rewards == [-1.0] * 6 + [2.0]  # letter 0 + fallback -1; then 1 + 1
    assert out.accuracies == [0.0] * 6 + [1.0]
    log = caplog.text
    for problem in ("raised KeyError", "returned nan, not a finite", "returned inf",
                    "returned 5.0, outside its range [0, 1]", "returned str '1', not a number",
                    "failed on example a", "failed on 1 more completions"):  # fmt: skip
        assert problem in log, problem
    short = build_scorer(cfg(rewards, ["short"]), TASK).score(EXAMPLES, ["F", "C"], group_size=2)
    assert short.failures == {"short": 2} and short.rewards == [0.0, 0.0]


def test_ranges_by_function_name(rewards):
    wide = cfg(rewards, ["compute_score"], reward_ranges={"compute_score": [0, 10]})
    assert build_scorer(wide, TASK).score([EXAMPLES[0]], ["big"]).rewards == [5.0]
    with pytest.raises(UserError, match="task.reward_ranges names nope, which is no reward"):
        build_scorer(cfg(rewards, ["letter"], reward_ranges={"nope": [0, 1]}), TASK)
    two = build_scorer(cfg(rewards, ["letter", "letter"]), TASK)
    assert two.names == ["letter", "letter_2"]


def test_the_task_own_reward_in_process_and_its_failures(caplog):
    class Flaky:
        name = "flaky task"
        max_new_tokens = 4
        score = staticmethod(lambda ex, text: 1.0 if text == "ok" else 0.0)

        @staticmethod
        def reward(ex, text):
            if text == "boom":
                raise KeyError("tool schema")
            return {"ok": 1.0, "nan": math.nan, "high": 1.5}.get(text, 0.0)

    out = Scorer(Flaky(), []).score([EXAMPLES[0]] * 4, ["ok", "boom", "nan", "high"])
    assert out.rewards == [1.0, 0.0, 0.0, 0.0] and out.accuracies == [1.0, 0.0, 0.0, 0.0]
    assert out.failures == {"flaky_task": 3}
    assert "reward flaky_task failed on example a: raised KeyError" in caplog.text


def test_the_pool_gives_what_in_process_gives_and_survives_hangs_and_deaths(rewards):
    names = ["letter", "slow_half", "compute_score"]
    texts = ["F", "G", "F", "C"] * 3
    examples = [EXAMPLES[0]] * len(texts)
    inline = build_scorer(cfg(rewards, names), TASK).score(examples, texts, group_size=4)
    pooled = build_scorer(cfg(rewards, names, reward_processes=2, reward_timeout_s=1.5), TASK)
    try:
        out = pooled.score(examples, texts, group_size=4)
        assert (out.rewards, out.accuracies, out.values) == (
            inline.rewards, inline.accuracies, inline.values,
        )  # fmt: skip
        start = time.monotonic()
        bad = pooled.score([EXAMPLES[0]] * 4, ["hang", "F", "die", "F"], group_size=4)
        assert time.monotonic() - start < 10
        assert bad.failures == {"compute_score": 2} and bad.failed == [True, False, True, False]
        assert bad.values["compute_score"] == [None, 1.0, None, 1.0]  # the rest went on
        assert pooled.pool.restarts == 2
        again = pooled.score(examples, texts, group_size=4)  # replaced processes serve
        assert again.rewards == inline.rewards
        procs = [p.proc for p in pooled.pool.procs]
    finally:
        pooled.close()
    assert all(p.poll() is not None for p in procs)
