"""The import rules of the house, as contracts (`make lint` runs this file, so CI does):

1. `shared` imports neither `learner` nor `rollout_worker` (nor vLLM, Ray, torch, transformers);
2. `learner` and `rollout_worker` never import each other;
3. nothing in `learner/` outside `learner/driver/` imports the driver: the learner's core, its
   objectives and models sit below it (the benchmarks, `learner/bench/`, and the Python API,
   `learner/api.py`, run whole runs and sit above it);
4. no import circle between the project's modules (imports inside functions count: they hide
   circles, they do not remove them);
5. an import inside a function says why beside it (a comment on its line or the line above:
   an optional dependency, start-up time, ...).
Each rule is a function of the import graph, so that a test can show it fails when broken.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "learner", "rollout_worker")
HEAVY = ("vllm", "ray", "torch", "transformers")


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # project modules and top-level libraries
    unexplained: list[int] = field(default_factory=list)  # lines of function imports, no reason


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(target: str, names: set[str]) -> str:
    """The longest project module `target` names (a.b.c -> a.b if c is a function)."""
    while target and target not in names and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def read_modules(root: Path = REPO) -> dict[str, Module]:
    paths = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    modules = {
        module_name(p, root): Module(module_name(p, root), p.relative_to(root)) for p in paths
    }
    names = set(modules)
    for module in modules.values():
        source = (root / module.path).read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                top = target.split(".")[0]
                module.imports.add(resolve(target, names) if top in PACKAGES else top)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        line = inner.lineno
                        here, above = lines[line - 1], lines[line - 2].strip() if line > 1 else ""
                        if "#" not in here and not above.startswith("#"):
                            module.unexplained.append(line)
    return modules


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden(modules, source: str, target: str, unless: tuple[str, ...] = ()) -> list[str]:
    """`source.*` importing `target.*` (except from the packages `unless`)."""
    out = []
    for m in modules.values():
        if not within(m.name, source) or any(within(m.name, u) for u in unless):
            continue
        for imp in sorted(m.imports):
            if within(imp, target):
                out.append(f"{m.name} imports {imp}")
    return out


def circles(modules) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in modules[v].imports:
            if w not in modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


def broken_rules(modules) -> dict[str, list]:
    rules = {
        "shared imports learner, rollout_worker or heavy libraries": [
            line
            for target in ("learner", "rollout_worker", *HEAVY)
            for line in forbidden(modules, "shared", target)
        ],
        "learner and rollout_worker import each other": forbidden(
            modules, "learner", "rollout_worker"
        )
        + forbidden(modules, "rollout_worker", "learner"),
        "learner outside learner/driver imports the driver": forbidden(
            modules,
            "learner",
            "learner.driver",
            unless=("learner.driver", "learner.bench", "learner.api"),
        ),
        "import circles": circles(modules),
        "imports inside functions without a reason beside them": [
            f"{m.path}:{line}" for m in modules.values() for line in m.unexplained
        ],
    }
    return {k: v for k, v in rules.items() if v}


def test_the_house_keeps_its_import_rules():
    broken = broken_rules(read_modules())
    assert not broken, "\n".join(f"{rule}: {found}" for rule, found in broken.items())


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("shared/x_probe.py", "import ray\n", "shared imports"),
        ("shared/x_probe.py", "from learner.learner import Learner\n", "shared imports"),
        ("learner/x_probe.py", "from rollout_worker.worker import RolloutWorker\n", "each other"),
        ("rollout_worker/x_probe.py", "import learner.policy\n", "each other"),
        ("learner/x_probe.py", "from learner.driver.train import train\n", "imports the driver"),
        ("shared/x_probe.py", "def f():\n    import json\n", "without a reason"),
        ("shared/x_probe.py", "from shared.x_probe2 import g\n", "circles"),
    ],
)
def test_each_rule_fails_when_broken(tmp_path, module, line, rule):
    """A copy of the packages with one offending module added: the rule it breaks fails."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        for path in (REPO / pkg).rglob("*.py"):
            target = tmp_path / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (tmp_path / module).write_text(line)
    (tmp_path / "shared/x_probe2.py").write_text("from shared.x_probe import f\n")
    broken = broken_rules(read_modules(tmp_path))
    assert any(rule in name for name in broken), broken
