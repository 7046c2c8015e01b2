"""docs/python-api.md's notebook, run as written in a fresh folder: `from learner.api import
train` trains the embedded default, evaluates it and leaves the run's card."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def notebook() -> str:
    (block,) = re.findall(
        r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), re.S
    )
    return block


@pytest.mark.slow
def test_the_docs_notebook_runs_as_written(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", notebook()], cwd=tmp_path, capture_output=True, text=True,
        timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "outputs" / "notebook"
    assert (run / "art.png").is_file() and (run / "summary.json").is_file()
    card = (run / "README.md").read_text()
    assert "![the trained image](art.png)" in card and "| seed | 0.000 | 16 |" in card
    assert "art-serve --tasks" in card and "dapo 8 tiny" in done.stdout
    assert not list(tmp_path.glob("**/unused"))  # no folder named `unused`


@pytest.mark.slow
def test_the_readmes_python_block_runs_as_written(tmp_path):
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
        timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'none': " in done.stdout and list(tmp_path.glob("outputs/*/README.md"))
