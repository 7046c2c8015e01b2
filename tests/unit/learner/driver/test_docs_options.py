"""Every `art-train` / `art-eval` / `art-compare` command written in the README and docs/
composes as written: its options are fields of the schema (or `+` additions), its presets
exist. Placeholders (`<run>`, `$HOME/...`, `...`) are left out; what the command would do with
the files it names is the business of the tests that run those examples."""

import re
import shlex
from pathlib import Path

import pytest

from learner.driver.cli import compose_config
from learner.driver.compare import split_method_overrides, split_objectives

REPO = Path(__file__).resolve().parents[4]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = ("art-train", "art-eval", "art-compare")


def commands() -> list[tuple[str, str, list[str]]]:
    """(doc, program, overrides) of every command in a fenced shell block."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", doc.read_text(), re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                make = re.match(r'make (train|eval|compare) ARGS="([^"]*)"', line)
                if make:
                    prog, rest = f"art-{make.group(1)}", make.group(2)
                else:
                    match = re.search(r"(?:^|/|\s)(art-train|art-eval|art-compare)\b(.*)", line)
                    if not match:
                        continue
                    prog, rest = match.group(1), match.group(2)
                try:
                    tokens = shlex.split(rest)
                except ValueError:
                    continue
                overrides = [
                    t for t in tokens
                    if "=" in t and not t.startswith("-") and not re.search(r"[<>$]|\.\.\.", t)
                ]  # fmt: skip
                found.append((doc.name, prog, overrides))
    return found


CASES = commands()


def test_the_docs_have_commands_to_check():
    assert len(CASES) >= 15 and {p for _, p, _ in CASES} == set(PROGRAMS)


@pytest.mark.parametrize(("doc", "prog", "overrides"), CASES,
                         ids=[f"{d}:{p}:{' '.join(o)[:60]}" for d, p, o in CASES])  # fmt: skip
def test_every_documented_command_composes(doc, prog, overrides):
    if prog == "art-compare":
        overrides, objectives = split_objectives(overrides)
        overrides, _ = split_method_overrides(overrides, objectives or ("art", "lora"))
    compose_config(*overrides)
