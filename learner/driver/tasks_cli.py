"""`art-tasks`: the tasks of a running multi-task run (learner/driver/multitask.py).

    art-tasks list   <run>                                  # every task: step, reward, state
    art-tasks add    <run> <name> name=synthetic options.target=C steps=20
    art-tasks remove <run> <name>                           # stops it; its outputs are kept

A request is a line appended to `<run>/tasks.control.jsonl`; the run's driver takes it at its
next step boundary (a task added starts from its seed image then; one removed keeps its
checkpoint, art.png and summary). Works wherever the run folder is visible (this machine, or a
shared file system of a cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from shared.errors import UserError

CONTROL, MANIFEST = "tasks.control.jsonl", "tasks.json"


def parse_entry(pairs: list[str]) -> dict:
    """`key=value` pairs (dotted keys nest: options.target=C) into a task entry; values are
    YAML (numbers, lists, null)."""
    entry: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{pair!r}: give key=value (name=synthetic options.target=C steps=20)")
        node = entry
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value) if value else ""
    return entry


def run_folder(path: str) -> Path:
    run = Path(path).expanduser()
    if not (run / MANIFEST).is_file():
        raise UserError(
            f"{run} is not a multi-task run's folder (no {MANIFEST}); start one with "
            "art-train tasks=<preset> or tasks_file=<yaml>"
        )
    return run


def request(run: Path, line: dict) -> None:
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(run / CONTROL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of a whole line: the driver never reads half a request
        os.write(fd, data)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="art-tasks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every task of the run").add_argument("run")
    add = sub.add_parser("add", help="a task, from the run's next step")
    add.add_argument("run")
    add.add_argument("name")
    add.add_argument(
        "settings", nargs="*", help="key=value: name=, options.*, steps=, weight=, ..."
    )
    remove = sub.add_parser("remove", help="stop a task (its outputs are kept)")
    remove.add_argument("run")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    try:
        run = run_folder(args.run)
        tasks = json.loads((run / MANIFEST).read_text())
        if args.command == "list":
            for name, t in tasks.items():
                state = t["ended"] or "training"
                print(f"{name:16} {t['task']:14} step {t['step']}/{t['steps']}  reward "
                      f"{t['reward_last'] if t['reward_last'] is not None else '-'}  {state}")  # fmt: skip
        elif args.command == "add":
            if args.name in tasks:
                raise UserError(f"the run has a task {args.name!r} already")
            entry = parse_entry(args.settings)
            request(run, {"op": "add", "name": args.name, "entry": entry})
            print(f"art-tasks: {args.name} joins {run.name} at its next step")
        else:
            if args.name not in tasks:
                raise UserError(f"no task {args.name!r} in {run.name} (it has: {', '.join(tasks)})")
            request(run, {"op": "remove", "name": args.name})
            print(f"art-tasks: {args.name} leaves {run.name} at its next step (outputs kept)")
    except UserError as err:
        print(f"art-tasks: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
