"""Realistic completions per answer type with their expected strict score."""

import json

import pytest

from shared.tasks import load_task
from shared.tasks.base import Example
from shared.tasks.gpqa import GPQATask
from shared.tasks.math import GSM8KTask

MATH = GSM8KTask(data_dir="unused")
# The paper's strict score and shaped reward (github.com/jinymusim/ART), worked out by hand from
# its regex `(?i)Answer:\s*\$?\s*(-?[\d,\s]+(?:\.\d+)?)\s*\$?`, last match, commas and spaces
# removed, then equal within 1e-6; reward 1 / 0.4 (rel. err <= 1%) / 0.2 (<= 10%) / 0.1
# (formatted, wrong or empty) / 0.01 (no `Answer:`, some number) / 0.
PAPER = [  # (gold, completion, strict score, reward)
    ("18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\nAnswer: 18", 1.0, 1.0),
    ("18", "Answer: $18", 1.0, 1.0),
    ("18", "Answer: $18.00", 1.0, 1.0),  # '18.00' equals 18 numerically
    ("18", "Answer: 18.", 1.0, 1.0),  # a '.' without digits is not part of the number
    ("-10", "Answer: $-10", 1.0, 1.0),
    ("-10", "Answer: -$10", 0.0, 0.1),  # '-' then '$': only the space is captured, empty
    ("1234", "Answer: 1 234", 1.0, 1.0),
    ("5", "Answer: 5.", 1.0, 1.0),
    ("7", "answer: 7", 1.0, 1.0),
    ("18", "ANSWER:18", 1.0, 1.0),
    ("18", "Answer:\n18", 1.0, 1.0),
    ("7", "Answer: 3\nAnswer: 7", 1.0, 1.0),  # two Answer: lines, the last counts
    ("7", "Answer: 7\nAnswer: 3", 0.0, 0.1),
    ("18", "She bought 18 apples, so 18.", 0.0, 0.01),  # a number only inside the reasoning
    ("18", "The answer is 18", 0.0, 0.01),
    ("18", "#### 18", 0.0, 0.01),
    ("18", "\\boxed{18}", 0.0, 0.01),
    ("18", "", 0.0, 0.0),
    ("18", "I don't know.", 0.0, 0.0),
    ("18", "Answer: **18**", 0.0, 0.1),  # markdown: the capture is empty but formatted
    ("18", "Answer: The total is 5", 0.0, 0.1),
    ("18", "Answer: 18 dollars", 1.0, 1.0),
    ("18", "Answer: 18\nThat is 2 more than 16.", 1.0, 1.0),
    ("18", "Answer: 18\n\n2 apples", 0.0, 0.1),  # digits run across blank lines: '182'
    ("100", "Answer: 99.5", 0.0, 0.4),  # relative error 0.005
    ("100", "Answer: 101", 0.0, 0.4),  # exactly 1%
    ("100", "Answer: 95", 0.0, 0.2),
    ("100", "Answer: 110", 0.0, 0.2),  # exactly 10%
    ("100", "Answer: 150", 0.0, 0.1),
    ("70000", "Answer: 70,000", 1.0, 1.0),
    ("1000000", "Answer: 1,000,000", 1.0, 1.0),
    ("0.5", "Answer: 0.5", 1.0, 1.0),
    ("0.5", "Answer: .5", 1.0, 1.0),  # ' .5' is captured, '.5' == 0.5
    ("0.5", "Answer: 1/2", 0.0, 0.1),  # captures '1'
    ("-3", "Answer: -3", 1.0, 1.0),
    ("-3", "Answer: 3", 0.0, 0.1),
    ("-3", "Answer: \u22123", 0.0, 0.1),  # a unicode minus is not a number
    ("2.25", "Answer: 2.25 hours", 1.0, 1.0),
    ("12", "Answer: 12 apples and 3 pears", 1.0, 1.0),
    ("40", "Answer: 40%", 1.0, 1.0),
    ("5", "Answer: five", 0.0, 0.1),
    ("12", "<think>Answer: 3</think>Answer: 12", 1.0, 1.0),  # thinking is stripped first
    ("12", "<think>Answer: 12</think>So 3.", 0.0, 0.01),
]


@pytest.mark.parametrize(("gold", "completion", "score", "reward"), PAPER)
def test_paper_score_and_reward(gold, completion, score, reward):
    example = Example("x", "q", gold)
    assert MATH.score(example, completion) == score
    assert MATH.reward(example, completion) == reward


LENIENT = GSM8KTask(data_dir="unused", scoring="lenient")
NUMERIC = [  # the lenient extractor (task.options.scoring=lenient): (gold, completion, score)
    ("18", "The answer is 18.", 1.0),
    ("18", "Final answer: **18**", 1.0),
    ("18", "So she makes \\boxed{18} dollars.", 1.0),
    ("18", "\\boxed{\\$18}", 1.0),
    ("18", "#### 18", 1.0),
    ("18", "Answer: 17\nWait, recheck: 16-3-4=9, 9*2=18.\nAnswer: 18", 1.0),
    ("18", "She makes 18 dollars.", 0.0),  # no explicit answer: strict score 0
    ("-3", "Answer: \u22123", 1.0),
    ("0.5", "Answer: 1/2", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("5", "Answer: five", 0.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), NUMERIC)
def test_lenient_numeric(gold, completion, expected):
    example = Example("x", "q", gold)
    assert LENIENT.score(example, completion) == expected
    reward = LENIENT.reward(example, completion)
    assert reward == 1.0 if expected == 1.0 else 0.0 <= reward < 1.0


GPQA = GPQATask()
CHOICE = [  # (gold, completion, expected score)
    ("B", "The correct answer is (B)", 1.0),
    ("B", "The correct answer is B.", 1.0),
    ("B", "After eliminating A and C... The correct answer is (B).", 1.0),
    ("B", "the correct answer is (B)", 1.0),
    ("B", "Answer: B", 1.0),
    ("B", "Answer: (B)", 1.0),
    ("B", "Final answer: **B**", 1.0),
    ("B", "\\boxed{B}", 1.0),
    ("B", "\\boxed{(B)}", 1.0),
    ("B", "\\boxed{\\text{B}}", 1.0),
    ("B", "The correct answer is (A)", 0.0),
    ("B", "The correct answer is (A). Hmm, no: The correct answer is (B)", 1.0),
    ("B", "The correct answer is (B). Wait, The correct answer is (C)", 0.0),
    ("B", "I lean to (B).", 0.0),  # not explicit
    ("B", "(B)", 0.0),
    ("B", "", 0.0),
    ("B", "The answer is a bit unclear.", 0.0),
    ("B", "The correct answer is Bob's.", 0.0),
    ("B", "<think>The correct answer is (B)</think>The correct answer is (D)", 0.0),
    ("B", "<think>(A)?</think>The correct answer is (B)", 1.0),
    ("D", "The correct answer is (D)", 1.0),
    ("D", "The correct answer is: D", 1.0),
    ("D", "correct answer is (d)", 0.0),
    ("A", "The correct answer is (A)", 1.0),
    ("A", "Answer: A) 3.2 eV", 1.0),
    ("A", "The correct answer is (E)", 0.0),
    ("C", "Options (A) and (B) fail, so The correct answer is (C)", 1.0),
    ("C", "The correct answer is **(C)**", 1.0),
    ("C", "It is (C) because ... The correct answer is (C)", 1.0),
    ("C", "The correct answer is  ( C )", 1.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), CHOICE)
def test_multiple_choice(gold, completion, expected):
    example = Example("x", "q", gold)
    assert GPQA.score(example, completion) == expected
    reward = GPQA.reward(example, completion)
    assert reward == 1.0 if expected == 1.0 else 0.0 <= reward < 1.0


def _call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


TOOLMIND = load_task("toolmind", data_files="unused")
WEATHER = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]
TWO = WEATHER + [{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}]
BOOK = [{"name": "book", "arguments": {"party_size": 4, "outdoor": True, "tags": ["quiet"]}}]
TOOL_CASES = [  # (gold calls, completion, expected score)
    (WEATHER, _call("get_weather", city="Paris", unit="celsius"), 1.0),
    (WEATHER, _call("get_weather", unit="celsius", city="Paris"), 1.0),
    (
        WEATHER,
        "<think>Paris, celsius</think>" + _call("get_weather", city="Paris", unit="celsius"),
        1.0,
    ),
    (
        WEATHER,
        "Sure! " + _call("get_weather", city="Paris", unit="celsius") + " Let me check.",
        1.0,
    ),
    (
        WEATHER,
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>',
        1.0,
    ),
    (
        WEATHER,
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}\n</tool_call>',
        1.0,
    ),
    (
        WEATHER,
        '<tool_call>\n{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}\n</tool_call>',
        1.0,
    ),
    (
        WEATHER,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        1.0,
    ),  # unclosed, EOS
    (WEATHER, _call("get_weather", city=" Paris ", unit="celsius"), 1.0),
    (WEATHER, _call("get_weather", city="Paris"), 0.0),
    (WEATHER, _call("get_weather", city="paris", unit="celsius"), 0.0),
    (WEATHER, _call("get_weather", city="Paris", unit="celsius", days=3), 0.0),
    (WEATHER, _call("get_forecast", city="Paris", unit="celsius"), 0.0),
    (
        WEATHER,
        "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>",
        0.0,
    ),
    (WEATHER, '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}', 0.0),
    (WEATHER, "The weather in Paris is sunny.", 0.0),
    (WEATHER, "", 0.0),
    (
        WEATHER,
        "<think>" + _call("get_weather", city="Paris", unit="celsius") + "</think>No call.",
        0.0,
    ),
    (WEATHER, _call("get_weather", city="Paris", unit="celsius") * 2, 0.0),
    (WEATHER, "<tool_call>\nnot json\n</tool_call>", 0.0),
    (WEATHER, '<tool_call>\n["get_weather"]\n</tool_call>', 0.0),
    (
        TWO,
        _call("get_weather", city="Paris", unit="celsius")
        + _call("get_weather", city="Rome", unit="celsius"),
        1.0,
    ),
    (
        TWO,
        _call("get_weather", city="Rome", unit="celsius")
        + _call("get_weather", city="Paris", unit="celsius"),
        1.0,
    ),
    (TWO, _call("get_weather", city="Paris", unit="celsius"), 0.0),
    (TWO, _call("get_weather", city="Paris", unit="celsius") * 2, 0.0),
    (BOOK, _call("book", party_size=4, outdoor=True, tags=["quiet"]), 1.0),
    (BOOK, _call("book", party_size=4.0, outdoor=True, tags=["quiet"]), 1.0),
    (BOOK, _call("book", party_size="4", outdoor=True, tags=["quiet"]), 0.0),
    (BOOK, _call("book", party_size=4, outdoor=1, tags=["quiet"]), 0.0),
    (BOOK, _call("book", party_size=4, outdoor=True, tags=["quiet", "view"]), 0.0),
    (BOOK, _call("book", party_size=4, outdoor=True), 0.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), TOOL_CASES)
def test_tool_calls(gold, completion, expected):
    example = Example("x", "q", json.dumps(gold))
    assert TOOLMIND.score(example, completion) == expected
    reward = TOOLMIND.reward(example, completion)
    assert reward == 1.0 if expected == 1.0 else 0.0 <= reward < 1.0


def test_tool_partial_credit_is_ordered():
    example = Example("x", "q", json.dumps(WEATHER))
    exact = TOOLMIND.reward(example, _call("get_weather", city="Paris", unit="celsius"))
    one_arg = TOOLMIND.reward(example, _call("get_weather", city="Paris"))
    name_only = TOOLMIND.reward(example, _call("get_weather", city="Rome"))
    wrong_name = TOOLMIND.reward(example, _call("get_forecast", city="Paris", unit="celsius"))
    nothing = TOOLMIND.reward(example, "no call")
    assert exact == 1.0 > one_arg > name_only > wrong_name > nothing == 0.0


def test_numeric_partial_credit_never_beats_correct():
    example = Example("x", "q", "100")
    assert MATH.reward(example, "Answer: 100") == 1.0
    assert MATH.reward(example, "Answer: 99") == 0.4
    assert MATH.reward(example, "I get 100.") == 0.01  # right number, not in the format
    assert MATH.reward(example, "Answer: 99") > MATH.reward(example, "Answer: 5000") == 0.1
