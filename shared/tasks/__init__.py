"""Tasks: examples, prompts and rewards. `load_task(name, **options)` is the entry point."""

from __future__ import annotations

from shared.tasks.base import Example, Task
from shared.tasks.synthetic import SyntheticColourTask

TASK_NAMES = ("synthetic",)


def load_task(name: str, **options) -> Task:
    match name:
        case "synthetic":
            return SyntheticColourTask(**options)
        case _:
            raise ValueError(f"unknown task {name!r}; available: {', '.join(TASK_NAMES)}")


__all__ = ["Example", "Task", "TASK_NAMES", "load_task"]
