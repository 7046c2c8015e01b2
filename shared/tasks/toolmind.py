"""ToolMind (arXiv 2511.15718, hub `Nanbeige/ToolMind`): structured tool use.

Row schema (JSONL): `conversations`, a list of OpenAI-style messages `{role, content,
tool_calls?}` with roles user / assistant / tool, where an assistant tool call is
`{"function": {"name": ..., "arguments": {...}}}`; and `tools`, a list of
`{"type": "function", "function": {"name", "description", "parameters"}}` specs.

One example per row: the conversation up to the row's last assistant turn that calls tools is
the context; that turn's calls are the gold answer. The prompt shows the tool specifications
and the conversation in Qwen's own format and asks for the call as a `<tool_call>` JSON block:

    <tool_call>
    {"name": "get_current_time", "arguments": {"timezone": "Europe/London"}}
    </tool_call>

Rows whose assistant never calls a tool carry no tool-call target and are skipped (counted in
`skipped_rows`). ToolMind has no official split: a seeded shuffle puts `test_size` rows in
`test` and the rest in `train`.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from shared.errors import UserError
from shared.tasks.base import Example, Task, strip_thinking
from shared.tasks.loading import drop_nulls, load_hub_rows, load_local_rows, require, row_error

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
TOOLMIND_INSTRUCTION = (
    "Reply with the next assistant action: call the right function. For each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML "
    'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _normalize_call(call: Any) -> dict | None:
    """{'name', 'arguments'} from an OpenAI-style or flat call; None if malformed."""
    if not isinstance(call, dict):
        return None
    if isinstance(call.get("function"), dict):
        call = call["function"]
    name, arguments = call.get("name"), call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def parse_tool_calls(completion: str) -> tuple[list[dict], int]:
    """(well-formed calls, number of <tool_call> blocks) found in a completion."""
    text = strip_thinking(completion)
    blocks = _TOOL_CALL_RE.findall(text)
    calls = []
    for block in blocks:
        try:
            parsed = json.loads(block)
        except json.JSONDecodeError:
            continue
        call = _normalize_call(parsed)
        if call is not None:
            calls.append(call)
    return calls, len(blocks)


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    return a == b


def calls_equal(pred: dict, gold: dict) -> bool:
    return pred["name"] == gold["name"] and _values_equal(pred["arguments"], gold["arguments"])


def call_credit(pred: dict, gold: dict) -> float:
    """Partial credit in [0, 0.7] for one predicted call against one gold call."""
    if pred["name"] != gold["name"]:
        return 0.0
    gold_args, pred_args = gold["arguments"], pred["arguments"]
    keys = set(gold_args) | set(pred_args)
    matching = sum(
        1 for k in gold_args if k in pred_args and _values_equal(pred_args[k], gold_args[k])
    )
    arg_frac = matching / len(keys) if keys else 1.0  # extra or missing arguments both cost
    return 0.2 + 0.5 * arg_frac


class ToolMindTask(Task):
    name = "toolmind"
    icon = "wrench"  # tool use
    max_new_tokens = 512
    HUB = "Nanbeige/ToolMind"

    def __init__(
        self,
        data_files: str | None = None,
        hub_config: str | None = None,
        hub_split: str = "graph_syn_datasets",
        split_seed: int = 0,
        test_size: int = 500,
    ):
        self.data_files, self.hub_config, self.hub_split = data_files, hub_config, hub_split
        self.split_seed, self.test_size = split_seed, test_size
        self.skipped_rows = 0

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test", "all"):
            raise UserError(f"toolmind split must be 'train', 'test' or 'all', got {split!r}")
        if self.data_files:
            rows, source = load_local_rows(self.data_files), str(self.data_files)
        else:
            rows = [drop_nulls(r) for r in load_hub_rows(self.HUB, self.hub_config, self.hub_split)]
            source = self.HUB
        examples, self.skipped_rows = [], 0
        for index, row in enumerate(rows):
            example = self._to_example(row, index, source)
            if example is None:
                self.skipped_rows += 1
            else:
                examples.append(example)
        order = list(range(len(examples)))
        random.Random(self.split_seed).shuffle(order)
        test_size = min(self.test_size, len(examples) // 2)
        chosen = {"test": order[:test_size], "train": order[test_size:], "all": order}[split]
        out = [examples[i] for i in sorted(chosen)]
        return out[:limit] if limit is not None else out

    def _to_example(self, row, index: int, source: str) -> Example | None:
        conversation = require(row, "conversations", source, index, list)
        tools = require(row, "tools", source, index, list)
        for turn_index, turn in enumerate(conversation):
            if not isinstance(turn, dict) or turn.get("role") not in (
                "system",
                "user",
                "assistant",
                "tool",
            ):
                raise row_error(
                    source, index, f"conversation turn {turn_index} has no valid role: {turn!r:.80}"
                )
        targets = [
            i
            for i, t in enumerate(conversation)
            if t["role"] == "assistant" and t.get("tool_calls")
        ]
        if not targets:
            return None
        target = targets[-1]
        gold = [_normalize_call(c) for c in conversation[target]["tool_calls"]]
        if any(c is None for c in gold):
            raise row_error(source, index, f"turn {target} has a malformed tool call")
        question = self._render(conversation[:target], tools)
        return Example(
            uid=str(row.get("id", f"toolmind-{index}")),
            question=question,
            answer=json.dumps(gold, ensure_ascii=False),
            metadata={"row": index, "num_turns": target},
        )

    @staticmethod
    def _render(history: list[dict], tools: list) -> str:
        tool_lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        turns = []
        for turn in history:
            content = strip_thinking(str(turn.get("content") or ""))
            if turn["role"] == "tool":
                turns.append(f"<tool_response>\n{content}\n</tool_response>")
                continue
            text = f"{turn['role']}: {content}".rstrip()
            for call in turn.get("tool_calls") or []:
                normalized = _normalize_call(call) or call
                text += f"\n<tool_call>\n{json.dumps(normalized, ensure_ascii=False)}\n</tool_call>"
            turns.append(text)
        return (
            "# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{tool_lines}\n</tools>\n\n# Conversation\n\n"
            + "\n\n".join(turns)
            + "\n\n"
            + TOOLMIND_INSTRUCTION
        )

    @staticmethod
    def gold_calls(example: Example) -> list[dict]:
        return json.loads(example.answer)

    def gold_completion(self, example: Example) -> str:
        """The gold calls, one `<tool_call>` block each, as the instruction asks."""
        if "completion" in example.metadata:
            return str(example.metadata["completion"])
        return "\n".join(
            f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"
            for call in self.gold_calls(example)
        )

    def score(self, example: Example, completion: str) -> float:
        gold = self.gold_calls(example)
        pred, _ = parse_tool_calls(completion)
        if len(pred) != len(gold):
            return 0.0
        remaining = list(pred)
        for g in gold:  # order-insensitive matching of parallel calls
            match = next((p for p in remaining if calls_equal(p, g)), None)
            if match is None:
                return 0.0
            remaining.remove(match)
        return 1.0

    def format_ok(self, example: Example, completion: str) -> bool:
        calls, blocks = parse_tool_calls(completion)
        return bool(calls) and len(calls) == blocks

    def reward(self, example: Example, completion: str) -> float:
        """1.0 exact; else 0.1 for a parsable call, +0.2 right name, +0.5 x matching-argument
        fraction, averaged over gold calls (at most 0.8)."""
        if self.score(example, completion) == 1.0:
            return 1.0
        gold = self.gold_calls(example)
        pred, _ = parse_tool_calls(completion)
        if not pred:
            return 0.0
        credits = [max(call_credit(p, g) for p in pred) for g in gold]
        extra = max(0, len(pred) - len(gold))
        shaped = 0.1 + sum(credits) / len(gold) - 0.1 * extra
        return float(min(max(shaped, 0.1), 0.9))
