"""ART from Python (a notebook, a script): the same runs as `art-train`, `art-eval` and
`art-compare`, with the same config (`conf/`, overrides as `key=value` strings) and the same run
folders. docs/python-api.md has a notebook-style example that a test runs.

    from learner.api import train, evaluate

    run = train(["steps=30"])                  # the embedded default, 30 steps
    print(run.summary["reward_last5"], run.image_path)
    results = evaluate(["eval.limit=32"], conditions=["none", "seed", run.image_path])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.algorithms import check_config
from learner.driver.cli import compose_config, configure_logging
from learner.driver.compare import compare as compare_runs
from learner.driver.evaluate import evaluate as evaluate_conditions
from learner.driver.train import train as train_run


@dataclass(frozen=True)
class RunResult:
    """What a training run left: its folder, its summary (summary.json) and its artifact."""

    run_dir: Path
    summary: dict
    artifact_path: Path  # art.png, or the LoRA baseline's adapter/ folder
    image_path: Path | None  # art.png (None for method=lora)

    @property
    def card(self) -> Path:
        """The run's README.md: what it is, how it did, how to serve it."""
        return self.run_dir / "README.md"


def config(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> DictConfig:
    """The run's config (conf/ with `overrides`), checked as `art-train` checks it; its run
    folder is `run_dir` or a new one under `output_dir`."""
    cfg = compose_config(*overrides, run_dir=None if run_dir is None else str(run_dir))
    check_config(cfg)
    return cfg


def _logging() -> None:
    if not logging.getLogger().handlers:  # a notebook: progress lines as art-train prints them
        configure_logging()


def train(
    overrides: Sequence[str] = (), config: DictConfig | None = None, run_dir=None
) -> RunResult:
    """Train as `art-train <overrides>` does (or with a `config` from `config(...)`); raises
    `shared.errors.UserError` for bad input and `RunStoppedError` for a run that stopped."""
    _logging()
    cfg = config if config is not None else compose_config(*overrides, run_dir=run_dir)
    summary = train_run(cfg)
    artifact = Path(summary["artifact_path"])
    image = Path(summary["image_path"]) if summary.get("image_path") else None
    return RunResult(Path(cfg.run_dir), summary, artifact, image)


def evaluate(
    overrides: Sequence[str] = (), conditions: Sequence[str | Path] | None = None, run_dir=None
) -> dict:
    """Evaluate as `art-eval` does: `conditions` are `none`, `seed`, PNG paths or adapter
    folders (default: eval.conditions); returns {condition: metrics}."""
    _logging()
    extra = [f"eval.conditions=[{','.join(str(c) for c in conditions)}]"] if conditions else []
    return evaluate_conditions(compose_config(*overrides, *extra, run_dir=run_dir))


def compare(
    overrides: Sequence[str] = (), objectives: Sequence[str] | None = None, run_dir=None
) -> dict:
    """Train and evaluate ART against LoRA (or several `objectives`) as `art-compare` does;
    returns the report (compare.json)."""
    _logging()
    folder = Path(run_dir) if run_dir else Path(compose_config(*overrides).run_dir)
    return compare_runs(list(overrides), folder, objectives=list(objectives or []) or None)
