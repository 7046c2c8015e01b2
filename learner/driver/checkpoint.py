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

Resuming never stops on one bad file: `resume_point` takes the newest checkpoint of the run
that loads and fits (`last.pt`, else the `step_*.pt` files, newest first) and names the files
it skipped and why; only when none loads is it an error. `logging.keep_checkpoints=N` keeps the
newest N `step_*.pt` files and the best step's (`prune_checkpoints`).
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np  # torch is imported where used: the CLI answers bad input before loading it

from shared.atomic import write_bytes_atomic
from shared.errors import UserError

FORMAT = 1
logger = logging.getLogger("art.checkpoint")
STEP_FILE = re.compile(r"step_(\d+)\.pt")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from; the message says why."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another model, image size or method."""


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
    # The rollout workers the run wanted when it was saved (art-scale can change it), and the
    # rollout.num_workers its command gave: a resume with that same command gets the former.
    workers_wanted: int | None = None
    workers_config: int | None = None
    teacher_accuracy: float | None = None  # distill: the teacher's validation accuracy

    @property
    def rewards(self) -> list[float]:
        return self.history.get("reward_mean", [])

    def record(self, metrics: dict[str, float], keys: tuple[str, ...]) -> None:
        for key in keys:
            self.history.setdefault(key, []).append(float(metrics.get(key, float("nan"))))


def capture_rng() -> dict:
    # start-up time: a heavy library, loaded when this runs
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict) -> None:
    # start-up time: a heavy library, loaded when this runs
    import torch

    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _tuples(value):
    """Python's random state is nested tuples; keep it so after a round trip."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(path: Path, learner_state: dict, driver: DriverState) -> Path:
    # start-up time: a heavy library, loaded when this runs
    import torch

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "learner": learner_state, "driver": asdict(driver)}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path, model: str, height: int, width: int, method: str = "art"):
    """(learner state, DriverState), after checking the checkpoint fits this run."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    path = Path(path)
    if not path.is_file():
        raise missing_checkpoint(path)
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
        raise CheckpointMismatch(
            f"refusing to resume from {path}: "
            + "; ".join(problems)
            + " (resume with the run's own config, or start a new run)"
        )
    return learner, DriverState(**state["driver"])


def step_files(folder: Path) -> list[Path]:
    """`<folder>/step_*.pt` (a run's `checkpoints/`), newest (highest step) first."""
    found = []
    for path in Path(folder).glob("step_*.pt"):
        match = STEP_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def has_checkpoint(folder: Path) -> bool:
    """Whether a run's `checkpoints/` folder holds any checkpoint file."""
    return (Path(folder) / "last.pt").is_file() or bool(step_files(folder))


def missing_checkpoint(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} does not exist; give resume_from=<run>/checkpoints/last.pt of "
        "an earlier run, or resume=auto"
    )


def resume_point(
    folder: Path,
    model: str,
    height: int,
    width: int,
    method: str = "art",
    given: Path | None = None,
):
    """(path, learner state, DriverState) of the newest checkpoint in the run's checkpoint
    `folder` that loads and fits this run, or None when it holds no checkpoint file (a new
    run). `last.pt` is the newest unless a `step_*.pt` of a later step loads (its `last.pt`
    write failed). `given`: an explicit `step_*.pt` is taken as it is (no fallback); a given
    `last.pt` falls back like the run's own. Skipped files are logged with the reason; when
    none loads, the error names each."""
    if given is not None and given.name != "last.pt":
        return (given, *load_checkpoint(given, model, height, width, method))
    last = given if given is not None else Path(folder) / "last.pt"
    steps = step_files(last.parent)
    if given is None and not last.exists() and not steps:
        return None
    skipped: list[tuple[Path, CheckpointError]] = []
    found = None
    try:
        found = (last, *load_checkpoint(last, model, height, width, method))
    except CheckpointError as err:
        skipped.append((last, err))
    for path in steps:
        step = int(STEP_FILE.fullmatch(path.name).group(1))
        if found is not None and step <= found[2].step:
            break
        try:
            found = (path, *load_checkpoint(path, model, height, width, method))
            break
        except CheckpointError as err:
            skipped.append((path, err))
    unreadable = skipped
    for path, err in unreadable:
        logger.warning("resume: skipping %s: %s", path, err)
    if found is not None:
        if unreadable:
            logger.warning(
                "resume: %d checkpoint file(s) skipped; resuming from %s (step %d)",
                len(unreadable),
                found[0],
                found[2].step,
            )
        return found
    if len(unreadable) == 1 or all(isinstance(e, CheckpointMismatch) for _, e in unreadable):
        raise unreadable[0][1]  # the one file's own message, or the newest one's refusal
    raise CheckpointError(
        f"no checkpoint in {last.parent} can be resumed from: "
        + "; ".join(f"{p.name}: {_reason(e, p)}" for p, e in unreadable)
        + ". Resume from a copy of the run's checkpoints, or start a new run (leave resume unset)"
    )


def _reason(err: CheckpointError, path: Path) -> str:
    """The part of a checkpoint error after its path."""
    text = str(err)
    for prefix in (f"refusing to resume from {path}: ", f"{path} ", f"checkpoint {path} "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def prune_checkpoints(folder: Path, keep: int | None, protect: set[int]) -> list[Path]:
    """Remove `step_*.pt` files beyond the newest `keep` (never a step in `protect`: the best
    step, the one resumed from); returns what was removed. `keep=None` keeps all."""
    if keep is None:
        return []
    removed = []
    for path in step_files(folder)[keep:]:
        if int(STEP_FILE.fullmatch(path.name).group(1)) in protect:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def estimate_checkpoint_bytes(cfg, model_path: str | None = None) -> int:
    """About the size of one checkpoint of this run, from the config: the trained parameters
    with Adam's two moments (float32: the pixel logits C x H x W for ART; for LoRA the
    adapter's r x (in + out) per adapted module, read from the model's safetensors headers,
    beside the pixels it keeps), older images kept for staleness, the seed image, and a margin
    for the RNG states and the driver's per-step history."""
    height, width = cfg.image.height, cfg.image.width
    pixels = 3 * height * width
    trained = pixels * 4 * 3 + pixels * 4 * cfg.algo.max_staleness
    if cfg.method.name == "lora" and model_path:
        lora = lora_parameters(model_path, cfg.method.lora.rank, cfg.method.lora.target_modules)
        trained = lora * 4 * 3 + pixels * 4
    return trained + height * width * 3 + (64 << 10) + 200 * cfg.steps


def lora_parameters(model_path: str, rank: int, targets) -> int:
    """LoRA parameters r x (in + out) of every 2-D weight named `*.<target>.weight` in the
    model's safetensors files (their JSON headers only; 0 when there are none)."""

    total, targets = 0, {str(t) for t in targets}
    for file in Path(model_path).glob("*.safetensors"):
        try:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for name, info in header.items():
            parts = name.split(".")
            shape = info.get("shape", []) if isinstance(info, dict) else []
            if (
                len(parts) >= 2
                and parts[-1] == "weight"
                and parts[-2] in targets
                and len(shape) == 2
            ):
                total += rank * (shape[0] + shape[1])
    return total
