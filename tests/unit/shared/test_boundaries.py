"""The package boundaries of the design card, checked rather than hoped for."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _imported_modules(package: str) -> set[str]:
    names = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_rollout_worker_and_learner_never_import_each_other():
    assert "learner" not in _imported_modules("rollout_worker")
    assert "rollout_worker" not in _imported_modules("learner")


def test_shared_imports_no_vllm_ray_or_model_code():
    assert not {
        "vllm",
        "ray",
        "torch",
        "transformers",
        "learner",
        "rollout_worker",
    } & _imported_modules("shared")
    code = (
        "import sys, shared, shared.artifact, shared.messages, shared.prompts, shared.config, "
        "shared.tasks, shared.tasks.scoring, shared.tasks.reward_pool, shared.tasks.custom, "
        "shared.tasks.reasoning_gym, shared.tasks.reward_worker\n"
        "bad = [m for m in ('vllm', 'ray', 'torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
