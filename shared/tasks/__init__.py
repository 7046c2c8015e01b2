"""Tasks: examples, prompts and rewards. `load_task(name, **options)` is the entry point.

Every task gives `examples(split, limit)`, a strict `score` (exactly 0.0 or 1.0) and a shaped
`reward` in [0, 1] where a fully correct answer gives exactly 1.0 and beats all partial credit.

One door for every task: `TASKS` maps a name to the import path of its class, and a name that
is itself an import path (`my_tasks:MyTask`, `path/to/task.py:MyTask`) loads the user's class
the same way (`register_task` adds a name). Rewards by import path: `shared/tasks/scoring.py`.
"""

from __future__ import annotations

import inspect

from shared.errors import UserError
from shared.tasks.base import Example, Task
from shared.tasks.entrypoints import EntryPointError, load_entry
from shared.tasks.loading import DatasetRowError

# Task name -> the import path of its class (the built-ins use the door users use).
TASKS: dict[str, str] = {
    "synthetic": "shared.tasks.synthetic:SyntheticColourTask",
    "gsm8k": "shared.tasks.math:GSM8KTask",
    "svamp": "shared.tasks.math:SVAMPTask",
    "gpqa": "shared.tasks.gpqa:GPQATask",
    "toolmind": "shared.tasks.toolmind:ToolMindTask",
    "custom": "shared.tasks.custom:CustomTask",
    "reasoning_gym": "shared.tasks.reasoning_gym:ReasoningGymTask",
}
TASK_NAMES = tuple(TASKS)
# The methods a task class must have (shared.tasks.base.Task has them all).
TASK_METHODS = ("examples", "score")


def register_task(name: str, target: str) -> None:
    """Make `task=<name>` (or `load_task(name)`) load the class at import path `target`."""
    TASKS[name] = target


def load_task_class(name: str) -> type:
    """The class a task name (or an import path) stands for, checked: a class with
    `examples` and `score` (a `shared.tasks.base.Task` subclass, or one shaped like it)."""
    target = TASKS.get(name)
    if target is None:
        if ":" not in name:
            raise UserError(
                f"unknown task {name!r}; set task=<name> with one of: {', '.join(TASKS)}, or "
                "task=class task.name=<module:Class or path/to/file.py:Class> (docs/tasks.md)"
            )
        target = name
    cls = load_entry(target, "task.name")
    if not isinstance(cls, type):
        raise EntryPointError(
            f"task.name: {target} is {_a(type(cls).__name__)}, not a class; give the import path "
            "of a shared.tasks.base.Task subclass"
        )
    missing = [
        m
        for m in TASK_METHODS
        if not callable(getattr(cls, m, None)) or getattr(cls, m) is getattr(Task, m)
    ]
    if missing:
        raise EntryPointError(
            f"task.name: {target} does not define {', '.join(missing)}; a task class "
            "subclasses shared.tasks.base.Task and defines examples(split, limit) and "
            "score(example, completion)"
        )
    return cls


def task_icon(name: str) -> str:
    """The icon `image.init=icon:task` starts from: the task class's `icon` (math unless the
    task says otherwise; ToolMind's is the wrench)."""
    return getattr(load_task_class(name), "icon", "math")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def load_task(name: str, **options) -> Task:
    """An instance of the task `name` (a registered name, or a class's import path) built with
    `options`; options the constructor does not take are refused in one line."""
    cls = load_task_class(name)
    check_options(cls, name, options)
    return cls(**options)


def check_options(cls: type, name: str, options: dict) -> None:
    """Refuse options the task's constructor does not take, naming those it does."""
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as err:
        params = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        takes = ", ".join(p.name for p in params) or "no options"
        raise UserError(
            f"task {name}: task.options do not fit its constructor ({err}); it takes: {takes}"
        ) from err


__all__ = [
    "DatasetRowError",
    "Example",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "check_options",
    "load_task",
    "load_task_class",
    "register_task",
]
