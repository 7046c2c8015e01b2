"""The pipeline never branches on a kind's name (docs/design.md; prime-rl's algorithms, verl's
rollout registry): no comparison or `case` of an algorithm's, a loss's or an engine's name
outside the modules that define them (learner/driver/algorithms/, learner/objectives/,
shared/engines.py). A kind is a class found in its registry."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NAMES = {"sft", "distill", "opd", "dapo", "grpo", "dr_grpo", "gspo", "cispo", "rloo",
         "hf", "vllm"}  # fmt: skip
OWNERS = ("learner/driver/algorithms/", "learner/objectives/", "shared/engines.py")


def _names(node) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    return set()


def branches(source: str) -> list[int]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(_names(p) & NAMES for p in parts):
                found.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and _names(node.value) & NAMES:
            found.append(node.lineno)
    return found


def test_no_branch_on_a_kinds_name_outside_its_registry():
    offenders = []
    for pkg in ("shared", "learner", "rollout_worker"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(OWNERS) or rel.startswith("learner/bench/"):
                continue  # the benchmarks compare engines and methods by design
            offenders += [f"{rel}:{line}" for line in branches(path.read_text())]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "code",
    ['if cfg.algo.loss == "sft":\n    pass\n', 'x = engine in ("hf", "vllm")\n',
     'match kind:\n    case "vllm":\n        pass\n'],
)  # fmt: skip
def test_the_check_finds_a_branch(code):
    assert branches(code)
