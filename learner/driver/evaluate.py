"""ART evaluation (Hydra app `art-eval`, what `make eval` runs).

Accuracy of the frozen model on a held-out split under image conditions:
- `none`: the text-only baseline (no image part in the prompt);
- `seed`: the configured seed image (separates "any image" from "the learned image");
- a path to a PNG: the trained art (its metadata must match the model and size);
- a path to a LoRA adapter folder (`adapter/` of a `method=lora` run): the baseline, with
  text-only prompts (or the seed image, if it was trained with one).
The paper's settings (`configs/learned_image.yaml` of its released code): greedy decoding, at
most 512 new tokens for math, presence penalty 1.0, thinking off, the image before the
question, the whole split unless `eval.limit` is given. The same rollout workers and engines
as training (HF on CPU, vLLM on GPU), prompts rendered exactly as in training.
Writes `eval.json` (with the ids of the evaluated examples) and an MLflow run, and prints a
comparison table.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.card import record_evaluation, strict_json
from learner.driver.cli import run_hydra_app
from learner.driver.cluster import run_scope, start_actors, worker_python
from learner.driver.observer import Tracker
from learner.driver.rollouts import WorkerPool, prompt_builder
from learner.driver.tracking import RunOutputs, check_tracking_uri, ensure_writable, run_params
from learner.driver.validation import eval_sampling, evaluate_condition
from learner.models import resolve_model_path
from shared.artifact import art_metadata, check_metadata, decode_png, encode_png, sha256
from shared.config import validate
from shared.errors import UserError
from shared.images import seed_image
from shared.messages import AdapterUpdate, ImageUpdate
from shared.prompts import PROMPT_LAYOUT
from shared.storage import room_problem
from shared.tasks import task_icon
from shared.tasks.scoring import open_task

logger = logging.getLogger("art.eval")
EVAL_ROOM_BYTES = 1 << 20  # what art-eval asks of its output folder at start


def condition_image(cfg, condition: str) -> bytes | None:
    """PNG bytes for a condition (None for the text-only baseline), checked against the model."""
    if condition == "none":
        return None
    if condition == "seed":
        height, width = cfg.image.height, cfg.image.width
        pixels = seed_image(
            cfg.image.init, height, width, cfg.seed, task_icon(cfg.task.name), cfg.image.background
        )
        return encode_png(pixels, art_metadata(cfg.model.name, height, width, 0))
    path = Path(condition)
    if not path.is_file():
        raise UserError(
            f"eval condition {condition!r} is neither none, seed, an existing PNG file nor a "
            "LoRA adapter folder"
        )
    png = path.read_bytes()
    try:
        _, metadata = decode_png(png)
    except Exception as err:  # not an image, or a truncated one
        why = "" if " object at 0x" in str(err) else f" ({err})"  # no reader's repr: the file
        raise UserError(
            f"eval condition {path} cannot be read as a PNG{why}; give the art.png of a run"
        ) from err
    check_metadata(
        metadata,
        cfg.model.name,
        cfg.image.height,
        cfg.image.width,
        prompt_layout=PROMPT_LAYOUT,
        source=str(path),
        allow_untagged=cfg.eval.allow_untagged_images,
    )
    return png


@dataclass
class Condition:
    """What one evaluation condition puts in front of the frozen model."""

    image: bytes | None  # the PNG in every prompt (None: text-only)
    adapter: AdapterUpdate | None = None  # a LoRA adapter applied to the model


def condition_policy(cfg, condition: str) -> Condition:
    """`none`, `seed`, a trained PNG, or a LoRA adapter folder (`adapter/` of a `method=lora`
    run), each checked against the model before anything starts."""
    path = Path(condition)
    if condition not in ("none", "seed") and (path / "adapter_config.json").is_file():
        return Condition(*adapter_condition(cfg, path))
    return Condition(condition_image(cfg, condition))


def adapter_condition(cfg, folder: Path) -> tuple[bytes | None, AdapterUpdate]:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        meta_path = folder / "art_lora.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        weights = (folder / "adapter_model.safetensors").read_bytes()
        adapter = AdapterUpdate(1, weights, config)
    except (OSError, ValueError) as err:  # missing file, bad JSON, not a LoRA adapter
        raise UserError(
            f"eval condition {folder} is not a usable LoRA adapter folder ({err}); give the "
            "adapter/ folder of a method=lora run (adapter_config.json, "
            "adapter_model.safetensors)"
        ) from err
    trained_for = meta.get("model") or config.get("base_model_name_or_path")
    if trained_for != cfg.model.name:
        raise UserError(
            f"refusing adapter {folder}: it was trained for model {trained_for!r}, not "
            f"{cfg.model.name!r}"
        )
    image = condition_image(cfg, "seed") if meta.get("with_image") else None
    return image, adapter


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    worker_python(cfg)  # the rollout workers' interpreter, before anything starts
    check_tracking_uri(cfg.logging.tracking_uri)
    if not cfg.eval.conditions:
        raise UserError(
            "eval.conditions is empty: nothing to evaluate; give e.g. "
            "eval.conditions=[none,seed,outputs/<run>/art.png]"
        )
    if cfg.cluster.single_gpu:  # no learner here: the vLLM worker may have the whole GPU
        # start-up time: a heavy library, loaded when this runs
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.rollout.num_gpus_per_worker = 1
    run_dir = Path(cfg.run_dir)
    ensure_writable(run_dir)
    problem = room_problem(run_dir, EVAL_ROOM_BYTES, "an evaluation (eval.json, metrics)")
    if problem:
        raise UserError(problem)

    task, examples, scorer = open_task(cfg.task, cfg.eval.split, cfg.eval.limit)
    if not examples:
        raise UserError(
            f"task {cfg.task.name} has no examples in split {cfg.eval.split!r}; check eval.split"
        )
    conditions = {c: condition_policy(cfg, c) for c in cfg.eval.conditions}  # refuse early
    model_path = resolve_model_path(cfg.model.name)
    prompt_for = prompt_builder(cfg, model_path)
    sampling = eval_sampling(cfg, task)

    ranks = [int(c.adapter.config.get("r", 16)) for c in conditions.values() if c.adapter]
    lora_rank = max(ranks) if ranks else None  # engines that can apply the adapters
    ray, owns_ray, _, workers = start_actors(cfg, model_path, False, lora_rank)
    outputs = RunOutputs(run_dir)
    pool = WorkerPool(ray, workers, max_attempts=cfg.rollout.max_restarts + 1)
    mlflow = Tracker(cfg, run_dir, cfg.run_name or f"eval-{run_dir.name}", params=run_params(cfg))
    outputs.mlflow = mlflow
    results = {}
    with run_scope(ray, owns_ray, workers, mlflow):
        for version, (condition, policy) in enumerate(conditions.items(), start=1):
            pool.clear_adapter()
            if policy.image is not None:
                pool.broadcast(ImageUpdate(version, policy.image))
            if policy.adapter is not None:
                pool.broadcast(
                    AdapterUpdate(version, policy.adapter.weights, policy.adapter.config)
                )
            logger.info("evaluating condition %s on %d examples", condition, len(examples))
            metrics = evaluate_condition(
                pool, scorer, examples, prompt_for, policy.image is not None, sampling, condition
            )
            metrics.update(
                model=cfg.model.name,
                task=cfg.task.name,
                split=cfg.eval.split,
                image_sha256=sha256(policy.image) if policy.image is not None else None,
                adapter_sha256=sha256(policy.adapter.weights) if policy.adapter else None,
                max_new_tokens=sampling.max_new_tokens,
                presence_penalty=sampling.presence_penalty,
            )
            results[condition] = metrics
            outputs.write("eval.json", strict_json(results))  # as they come
            key = _metric_key(condition)
            mlflow.log_metrics(
                {
                    f"{key}/{m}": metrics[m]
                    for m in ("accuracy", "format_rate", "mean_completion_tokens", "tokens_per_s")
                }
            )
        outputs.write("eval.json", strict_json(results), log=True)
    scorer.close()
    for card in record_evaluation(results):  # each evaluated run's README.md gets its table
        logger.info("updated %s", card)
    print(format_table(results))
    return results


def _metric_key(condition: str) -> str:
    """An MLflow-safe metric prefix for a condition (paths can hold any character)."""

    if condition in ("none", "seed"):
        return condition
    path = Path(condition)
    key = f"lora_{path.parent.name}" if path.is_dir() else "art_" + path.stem
    return re.sub(r"[^\w\-.]", "_", key)


def format_table(results: dict) -> str:
    header = f"{'condition':<40} {'accuracy':>9} {'format':>7} {'n':>5} {'tokens':>7} {'tok/s':>8}"
    lines = [header, "-" * len(header)]
    for condition, m in results.items():
        name = condition if len(condition) <= 40 else "..." + condition[-37:]
        lines.append(
            f"{name:<40} {m['accuracy']:>9.3f} {m['format_rate']:>7.3f} {m['n']:>5d} "
            f"{m['mean_completion_tokens']:>7.1f} {m['tokens_per_s']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    run_hydra_app(evaluate, "art-eval")


if __name__ == "__main__":
    main()
