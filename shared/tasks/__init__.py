"""Tasks: examples, prompts and rewards. `load_task(name, **options)` is the entry point.

Every task gives `examples(split, limit)`, a strict `score` (exactly 0.0 or 1.0) and a shaped
`reward` in [0, 1] where a fully correct answer gives exactly 1.0 and beats all partial credit.
"""

from __future__ import annotations

from shared.errors import UserError
from shared.tasks.base import Example, Task
from shared.tasks.loading import DatasetRowError

TASK_NAMES = ("synthetic", "gsm8k", "svamp", "gpqa", "toolmind")


def load_task(name: str, **options) -> Task:
    match name:
        case "synthetic":
            from shared.tasks.synthetic import SyntheticColourTask

            return SyntheticColourTask(**options)
        case "gsm8k":
            from shared.tasks.math import GSM8KTask

            return GSM8KTask(**options)
        case "svamp":
            from shared.tasks.math import SVAMPTask

            return SVAMPTask(**options)
        case "gpqa":
            from shared.tasks.gpqa import GPQATask

            return GPQATask(**options)
        case "toolmind":
            from shared.tasks.toolmind import ToolMindTask

            return ToolMindTask(**options)
        case _:
            raise UserError(
                f"unknown task {name!r}; set task=<name> with one of: {', '.join(TASK_NAMES)}"
            )


__all__ = ["DatasetRowError", "Example", "TASK_NAMES", "Task", "load_task"]
