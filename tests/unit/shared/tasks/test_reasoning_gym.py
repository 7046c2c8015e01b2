"""task=reasoning_gym: seeded splits of its generators, a mix, its scorer as the strict score."""

import os

import pytest

from shared.errors import UserError
from shared.tasks import load_task

if os.environ.get("CI") != "true":  # CI installs the extra (make install: .[dev,tasks])
    pytest.importorskip("reasoning_gym")


def test_seeded_splits_and_the_generators_own_scorer():
    task = load_task("reasoning_gym", dataset="leg_counting", size=12, test_size=6, seed=3)
    train, test = task.examples("train"), task.examples("test")
    assert len(train) == 12 and 0 < len(test) <= 6
    assert not {e.question for e in train} & {e.question for e in test}
    again = load_task("reasoning_gym", dataset="leg_counting", size=12, test_size=6, seed=3)
    assert [e.question for e in again.examples("train")] == [e.question for e in train]
    other = load_task("reasoning_gym", dataset="leg_counting", size=12, seed=4)
    assert [e.question for e in other.examples("train")] != [e.question for e in train]
    ex = train[0]
    right, wrong = f"<answer>{ex.answer}</answer>", f"<answer>{int(ex.answer) + 1}</answer>"
    assert task.score(ex, right) == 1.0 and task.reward(ex, right) == 1.0
    assert task.score(ex, wrong) == 0.0 and task.score(ex, ex.answer) == 0.0  # no tags
    assert task.format_ok(ex, wrong) and not task.format_ok(ex, "292")
    assert "<answer>" in task.system_prompt and task.max_new_tokens == 512


def test_a_weighted_mix_as_reasoning_gyms_composite():
    task = load_task(
        "reasoning_gym", datasets={"leg_counting": 1, "basic_arithmetic": 3}, size=40, seed=0
    )
    sources = [e.metadata["data_source"] for e in task.examples("train")]
    assert set(sources) == {"leg_counting", "basic_arithmetic"}
    assert sources.count("basic_arithmetic") > sources.count("leg_counting")
    ex = next(e for e in task.examples("train") if e.metadata["data_source"] == "basic_arithmetic")
    assert task.score(ex, f"<answer>{ex.answer}</answer>") == 1.0


def test_bad_names_and_options_are_one_line():
    with pytest.raises(UserError, match=r"no dataset 'leg_countin' \(did you mean leg_counting"):
        load_task("reasoning_gym", dataset="leg_countin")
    with pytest.raises(UserError, match="refused the options of leg_counting .*bogus"):
        load_task("reasoning_gym", dataset="leg_counting", config={"bogus": 1})
    with pytest.raises(UserError, match="needs task.options.dataset=<name>"):
        load_task("reasoning_gym")
    with pytest.raises(UserError, match="splits train, validation and test"):
        load_task("reasoning_gym", dataset="leg_counting", size=4).examples("dev")
