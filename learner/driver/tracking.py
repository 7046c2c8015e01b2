"""What a run leaves behind: the run folder's files, the step log, and the parameters of its
MLflow run (which learner/driver/observer.py feeds)."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import OmegaConf

from learner.driver.card import strict_json
from learner.driver.plots import evolution_grid, training_curves
from shared.atomic import write_bytes_atomic, write_folder_atomic
from shared.errors import UserError
from shared.messages import ImageUpdate

logger = logging.getLogger("art.train")


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Refuse at once an MLflow server that does not answer (MLflow itself retries for
    minutes before it gives up)."""

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return
    except OSError as err:
        raise UserError(
            f"the MLflow server at logging.tracking_uri={uri} does not answer ({err}); start it "
            "(`mlflow server --host 0.0.0.0 --port 5000`), fix the address, or leave "
            "logging.tracking_uri at its default (a local SQLite file)"
        ) from err


def run_params(cfg) -> dict[str, str]:
    """The config as MLflow parameters (flat keys; the run folder is not one)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: str(v)[:500] for k, v in flat.items() if k != "run_dir"}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def ensure_writable(folder: Path, setting: str = "output_dir") -> None:
    """Refuse, before anything is written, an output folder that cannot be created: a probe
    folder is made (and removed) in the nearest existing parent. `setting` chooses it."""

    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        shutil.rmtree(tempfile.mkdtemp(dir=probe, prefix=".art-probe-"))
    except OSError as err:
        raise UserError(
            f"cannot write the run folder {folder} ({err}); set {setting} to a folder you can write"
        ) from err


class RunOutputs:
    """The run folder, every file written atomically. ART: `art.png`, `seed.png`, `best.png`,
    `images/step_*.png`; LoRA: `adapter/` and `best_adapter/` (standard PEFT folders). Both:
    `checkpoints/`, `config.yaml`, `summary.json`, `curves.png` (and `images/evolution.png`)."""

    def __init__(self, run_dir: Path, mlflow=None, with_image: bool = True):
        self.run_dir, self.mlflow, self.with_image = Path(run_dir), mlflow, with_image
        ensure_writable(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.run_dir / "checkpoints"
        self.saved: tuple[Path, int] | None = None  # the newest checkpoint written: path, step

    def write(self, name: str, data: bytes, log: bool = False, artifact_path: str | None = None):
        path = write_bytes_atomic(self.run_dir / name, data)
        if log and self.mlflow is not None:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)
        return path

    def policy(self, update, name: str = "final", log: bool = False) -> Path:
        """The trained policy as its artifact: `art.png` / `best.png` (ART), or the PEFT
        folders `adapter/` / `best_adapter/` (LoRA)."""
        if isinstance(update, ImageUpdate):
            return self.write("art.png" if name == "final" else f"{name}.png", update.png, log)
        folder = "adapter" if name == "final" else f"{name}_adapter"
        path = write_folder_atomic(self.run_dir / folder, adapter_files(update, self.with_image))
        if log and self.mlflow is not None:
            self.mlflow.log_artifacts(str(path), artifact_path=folder)
        return path

    def step_policy(self, step: int, update) -> None:
        if isinstance(update, ImageUpdate):
            self.write(f"images/step_{step:06d}.png", update.png, log=True, artifact_path="images")
        self.policy(update)

    def config(self, cfg) -> None:
        self.write("config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())

    def summary(self, summary: dict) -> None:
        self.write("summary.json", strict_json(summary), log=True)  # NaN as null: strict JSON
        if self.mlflow is not None:
            path = Path(summary["artifact_path"])
            if path.is_dir():
                self.mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                self.mlflow.log_artifact(str(path))

    def plots(self, history: dict, title: str) -> None:
        """`curves.png` (reward, accuracy, kept-group fraction per step) and, for ART,
        `images/evolution.png` (the image at every checkpoint); both logged to MLflow."""

        self.write("curves.png", training_curves(history, title), log=True)
        steps = sorted((self.run_dir / "images").glob("step_*.png"))
        if steps:
            grid = evolution_grid(steps, self.run_dir / "seed.png")
            self.write("images/evolution.png", grid, log=True, artifact_path="images")


def adapter_files(update, with_image: bool) -> dict[str, bytes]:
    """A standard PEFT adapter folder (what `vllm serve --lora-modules` and
    `PeftModel.from_pretrained` read) plus `art_lora.json` (what it was trained for)."""
    meta = {
        "version": update.version,
        "model": update.config.get("base_model_name_or_path"),
        "with_image": with_image,
    }
    return {
        "adapter_config.json": json.dumps(update.config, indent=2).encode(),
        "adapter_model.safetensors": update.weights,
        "art_lora.json": json.dumps(meta, indent=2).encode(),
    }


def compute_step_metrics(rollouts, learn_metrics: dict, times) -> dict[str, float]:
    """The per-step MLflow metrics: rewards of the first round (the unbiased estimate of the
    current policy), dynamic-sampling counts, lengths, phase times and the learner's metrics."""
    t0, t1, t2, t3 = times
    rewards, accs = rollouts.first_round_rewards, rollouts.first_round_accuracies
    return {
        "reward_mean": mean(rewards),
        "reward_std": std(rewards),
        "accuracy": mean(accs),
        "kept_group_frac": len(rollouts.kept) / max(rollouts.groups_seen, 1),
        "generation_rounds": float(rollouts.rounds),
        "completion_len_mean": mean(rollouts.lengths),
        "completion_len_max": float(max(rollouts.lengths)),
        "time_rollout_s": t1 - t0,
        "time_update_s": t2 - t1,
        "time_broadcast_s": t3 - t2,
        "time_step_s": t3 - t0,
        "time_score_s": rollouts.score_s,
        **rollouts.reward_metrics(),  # rewards/<name>/mean|std|failures, per reward function
        **rollouts.extra,
        **learn_metrics,
    }


class Progress:
    """A progress bar on a terminal, one log line per step elsewhere."""

    def __init__(self, cfg, start_step: int):
        self.total, self.bar = cfg.steps, None
        if cfg.logging.progress and sys.stderr.isatty():
            # start-up time: a heavy library, loaded when this runs
            from tqdm import tqdm

            self.bar = tqdm(
                total=cfg.steps, initial=start_step, desc="art", unit="step", dynamic_ncols=True
            )

    def report(self, step: int, m: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{m['reward_mean']:.3f}", step_s=f"{m['time_step_s']:.1f}")
            self.bar.update(1)
            return
        if "kl" in m or m["reward_mean"] != m["reward_mean"]:  # sft, distill: no reward
            extra = "".join(
                f" {key} {m[key]:.3f}"
                for key in ("teacher_sample_accuracy", "student_sample_accuracy")
                if key in m
            )
            logger.info(
                "step %d/%d loss %.4f%s step %.1fs",
                step,
                self.total,
                m.get("loss", float("nan")),
                extra,
                m["time_step_s"],
            )
            return
        logger.info(
            "step %d/%d reward %.3f acc %.3f kept %.2f loss %.4f mismatch %.2e step %.1fs",
            step,
            self.total,
            m["reward_mean"],
            m["accuracy"],
            m["kept_group_frac"],
            m.get("loss", float("nan")),
            m.get("mismatch_abs_mean", float("nan")),
            m["time_step_s"],
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs: Sequence[float]) -> float:
    mu = mean(xs)
    return (sum((x - mu) ** 2 for x in xs) / len(xs)) ** 0.5 if xs else float("nan")


# The driver's figures through Ray's metrics (learner/metrics.py; docs/monitoring.md): Ray
# metric name -> (key of the step's metrics, description).
STEP_GAUGES = {
    "art_reward_mean": ("reward_mean", "first-round reward mean of the step"),
    "art_accuracy": ("accuracy", "first-round strict accuracy of the step"),
    "art_kept_group_frac": ("kept_group_frac", "fraction of groups dynamic sampling kept"),
    "art_generation_rounds": ("generation_rounds", "sampling rounds of the step"),
    "art_worker_restarts": ("worker_restarts", "rollout worker restarts in the run"),
    "art_skipped_updates": ("skipped_updates", "optimizer steps refused (NaN/inf) this step"),
    "art_mismatch_abs_mean": ("mismatch_abs_mean", "mean |rollout - learner| token log-prob"),
    "art_stale_completion_frac": ("stale_completion_frac", "completions of an older image"),
    "art_sync_bytes": ("sync_bytes", "bytes of the last broadcast policy"),
    "art_num_workers": ("num_workers", "rollout workers that sampled the step"),
}
PHASE_KEYS = {"rollout": "time_rollout_s", "update": "time_update_s"}
PHASE_KEYS |= {"broadcast": "time_broadcast_s", "step": "time_step_s"}


def export_step(ray_metrics, step: int, metrics: dict, workers_lost: int = 0) -> None:
    """A step's figures as Ray metrics (gauges tagged with the run; phases by `phase`)."""
    ray_metrics.set("art_step", step, "last completed step")
    for name, (key, description) in STEP_GAUGES.items():
        if key in metrics:
            ray_metrics.set(name, metrics[key], description)
    for phase, key in PHASE_KEYS.items():
        ray_metrics.set("art_phase_seconds", metrics[key], "seconds per phase", phase=phase)
    ray_metrics.set("art_workers_lost", workers_lost, "rollout workers gone for good")
    for key, value in metrics.items():  # rewards/<name>/mean|std: one series per function
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "rewards" and parts[2] in ("mean", "std"):
            description = f"{parts[2]} of one reward function's values in the step's first round"
            ray_metrics.set(f"art_reward_fn_{parts[2]}", value, description, fn=parts[1])
