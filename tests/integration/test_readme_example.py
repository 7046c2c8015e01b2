"""The "Your own task" example of docs/tasks.md, run exactly as written: its commands are read
from the doc (so the two cannot drift) and run in bash in a fresh folder with `.venv` and a home
of its own. The task it writes outside the repository trains on the embedded default model,
and art-eval takes it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The one bash block of docs/tasks.md's "Your own task" section."""
    section = (REPO / "docs" / "tasks.md").read_text().split("\n## Your own task\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return block


def test_the_example_writes_its_task_outside_the_repository():
    block = readme_example()
    assert "~/art-letters/rows.jsonl" in block and "$HOME/art-letters/reward.py:letter" in block
    assert "reward.py:concise]" in block and "task.reward_weights=[1,0.2]" in block
    assert ".venv/bin/art-train task=custom" in block and ".venv/bin/art-eval task=custom" in block
    written = set(re.findall(r"cat > ~/(\S+) <<", block))
    used = set(re.findall(r"\$HOME/([\w./-]+?\.(?:jsonl|py))", block))
    assert written == used == {"art-letters/rows.jsonl", "art-letters/reward.py"}


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, tiny_model_path):
    from learner.models.common import default_cache_dir

    home, checkout = tmp_path / "home", tmp_path / "checkout"
    home.mkdir()
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "HOME": str(home), "ART_CACHE_DIR": str(default_cache_dir())}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_example()],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "art-letters" / "reward.py").is_file()  # outside the checkout
    summary = json.loads((checkout / "outputs" / "letters" / "summary.json").read_text())
    print("reward", summary["reward_first5"], "->", summary["reward_last5"])
    assert summary["task"] == "custom" and summary["steps"] == 40
    assert summary["reward_last5"] > summary["reward_first5"] + 0.3  # it learns
    assert summary["reward_functions"]["letter"]["failures"] == 0
    assert summary["reward_functions"]["concise"]["failures"] == 0
    # the reward is the doc's: letter + 0.2 concise (a penalty, so below letter's own), and the
    # strict accuracy is letter's reaching its maximum, the penalty left out (else always 0)
    import torch

    last = checkout / "outputs" / "letters" / "checkpoints" / "last.pt"
    history = torch.load(last, weights_only=True)["driver"]["history"]
    letter, concise = history["rewards/letter/mean"], history["rewards/concise/mean"]
    for total, a, b in zip(history["reward_mean"], letter, concise, strict=True):
        assert total == pytest.approx(a + 0.2 * b, abs=1e-6)
    assert max(concise) < 0 and max(history["accuracy"]) > 0.5
    (eval_json,) = (checkout / "outputs").glob("*/eval.json")
    results = json.loads(eval_json.read_text())
    print({c: m["accuracy"] for c, m in results.items()})
    assert results["outputs/letters/art.png"]["accuracy"] > results["none"]["accuracy"]
    assert "outputs/letters/art.png" in done.stdout  # the comparison table
