"""score and reward never raise and stay in range, whatever the model writes."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.tasks import load_task
from shared.tasks.base import Example

TASKS = [
    (load_task("gsm8k", data_dir="unused"), Example("m", "q", "42")),
    (load_task("svamp", data_dir="unused"), Example("s", "q", "-2.5")),
    (load_task("gpqa"), Example("g", "q", "C")),
    (
        load_task("toolmind", data_files="unused"),
        Example("t", "q", json.dumps([{"name": "f", "arguments": {"a": 1}}])),
    ),
    (load_task("synthetic"), Example("y", "q", "F")),
]

# Arbitrary text plus fragments models emit, so the parsers' branches are reached.
FRAGMENTS = st.sampled_from(
    [
        "Answer:",
        "\\boxed{",
        "}",
        "####",
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "The correct answer is (",
        ")",
        "{",
        '"name"',
        '"arguments"',
        "1,000",
        "-",
        ".",
        "/",
        "$",
        "%",
    ]
)
TEXT = st.lists(st.one_of(st.text(max_size=40), FRAGMENTS), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=TEXT)
def test_score_and_reward_are_total_and_in_range(completion):
    for task, example in TASKS:
        score = task.score(example, completion)
        reward = task.reward(example, completion)
        assert score in (0.0, 1.0)
        assert 0.0 <= reward <= 1.0
        assert (reward == 1.0) == (score == 1.0)
