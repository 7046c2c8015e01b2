"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file per checkpoint (`<run>/checkpoints/step_<n>.pt` and `last.pt`), written by the
driver (the learner may sit on another node) atomically, holding:
- the learner's state: pixel logits, Adam state, image version, seed image, its torch RNG;
- the driver's state: the step, the prompt sampler's order and RNG, the Python, NumPy and
  torch RNG states, the best validation accuracy and its step, the per-step metrics so far,
  the MLflow run id and the worker restarts.
Only tensors and plain values are stored, so checkpoints load with
`torch.load(weights_only=True)`: a checkpoint from elsewhere cannot run code. A checkpoint of
another model, image size or method is refused with the reason.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np  # torch is imported where used: the CLI answers bad input before loading it

from shared.atomic import write_bytes_atomic
from shared.errors import UserError

FORMAT = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from; the message says why."""


@dataclass
class DriverState:
    """The driver's side of a checkpoint."""

    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)  # per-step metrics
    best_accuracy: float = -1.0
    best_step: int | None = None
    sampler: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    worker_restarts: int = 0
    # With algo.max_staleness=1: the whole next step (every round), sampled ahead (plain data).
    ahead: dict | None = None
    loop_wall_s: float = 0.0
    teacher_accuracy: float | None = None  # distill: the teacher's validation accuracy

    @property
    def rewards(self) -> list[float]:
        return self.history.get("reward_mean", [])

    def record(self, metrics: dict[str, float], keys: tuple[str, ...]) -> None:
        for key in keys:
            self.history.setdefault(key, []).append(float(metrics.get(key, float("nan"))))


def capture_rng() -> dict:
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict) -> None:
    import torch

    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _tuples(value):
    """Python's random state is nested tuples; keep it so after a round trip."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(path: Path, learner_state: dict, driver: DriverState) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "learner": learner_state, "driver": asdict(driver)}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path, model: str, height: int, width: int, method: str = "art"):
    """(learner state, DriverState), after checking the checkpoint fits this run."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give resume_from=<run>/checkpoints/last.pt of "
            "an earlier run, or resume=auto"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, truncated, or objects that are not data
        raise CheckpointError(
            f"{path} is not a readable ART checkpoint ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:200]}); resume from another checkpoint of "
            "the run"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ART checkpoint of format {FORMAT}")
    learner = state["learner"]
    problems = []
    if learner["method"] != method:
        problems.append(f"it trained method {learner['method']!r}, this run is {method!r}")
    if learner["model"] != model:
        problems.append(f"it was trained for model {learner['model']!r}, not {model!r}")
    if (learner["height"], learner["width"]) != (height, width):
        problems.append(
            f"its image is {learner['height']}x{learner['width']}, the config asks for "
            f"{height}x{width}"
        )
    if problems:
        raise CheckpointError(
            f"refusing to resume from {path}: "
            + "; ".join(problems)
            + " (resume with the run's own config, or start a new run)"
        )
    return learner, DriverState(**state["driver"])


def newest_checkpoint(run_dir: Path) -> Path | None:
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return last if last.is_file() else None
