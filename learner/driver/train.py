"""ART training driver (Hydra app `art-train`, what `make train` runs).

Each step, as named phases:
1. sample    - draw prompts, spread them over the rollout workers, G completions each;
2. score     - task reward, overlong shaping (DAPO), strict accuracy;
3. filter    - dynamic sampling: drop groups that carry no signal, draw more prompts (capped);
4. update    - the learner recomputes log-probs and takes DAPO/Adam steps on the pixel logits;
5. broadcast - the new PNG goes once into the Ray object store and to every worker;
6. log       - MLflow metrics; every k steps the PNG artifact and a checkpoint;
7. evaluate  - every `eval.every` steps on a validation slice of the training split (never
               the test split), keeping `best.png`.
The run folder `outputs/<run>/` ends with `art.png` and `summary.json`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.cli import run_hydra_app
from learner.driver.cluster import create_actors, placement, run_scope, start_ray
from learner.driver.rollouts import (
    PromptSampler,
    broadcast,
    compute_rollouts,
    prompt_builder,
    split_validation,
)
from learner.driver.tracking import Progress, RunOutputs, compute_step_metrics, mean, setup_mlflow
from learner.models import resolve_model_path
from shared.config import validate

logger = logging.getLogger("art.train")


@dataclass
class Run:
    """Everything a training run holds, built once by `train`."""

    cfg: DictConfig
    ray: object
    learner: object
    workers: list
    task: object
    sampler: PromptSampler
    prompt_for: object
    held_out: list
    outputs: RunOutputs
    best_accuracy: float = -1.0
    best_step: int | None = None


def train(cfg: DictConfig) -> dict:
    """Run ART end to end; returns the summary written to `summary.json`."""
    validate(cfg)
    wall_start = time.perf_counter()
    from shared.tasks import load_task

    task = load_task(cfg.task.name, **cfg.task.options)
    train_examples, held_out = task.examples(cfg.task.split), []
    if cfg.eval.every:
        train_examples, held_out = split_validation(train_examples, cfg.eval.val_size, cfg.seed)
    sampler = PromptSampler(train_examples, seed=cfg.seed)
    model_path = resolve_model_path(cfg.model.name)
    prompt_for = prompt_builder(cfg, model_path)

    ray, owns_ray = start_ray(cfg)
    learner, workers = create_actors(cfg, ray, model_path)
    where = placement(ray, learner, workers)
    logger.info("actors placed on nodes: %s", where)
    mlflow, mlflow_run = setup_mlflow(cfg, cfg.run_name or Path(cfg.run_dir).name)
    outputs = RunOutputs(Path(cfg.run_dir), mlflow)
    run = Run(cfg, ray, learner, workers, task, sampler, prompt_for, held_out, outputs)
    with run_scope(ray, owns_ray, [learner, *workers], mlflow):
        rewards = train_loop(run)
        final = ray.get(learner.image_update.remote())
        summary = {
            "steps": cfg.steps,
            "reward_first5": mean(rewards[:5]),
            "reward_last5": mean(rewards[-5:]),
            "rewards": rewards,
            "wall_time_s": round(time.perf_counter() - wall_start, 2),
            "image_path": str((outputs.run_dir / "art.png").resolve()),
            "image_version": final.version,
            "best_eval_accuracy": run.best_accuracy if run.best_step is not None else None,
            "best_step": run.best_step,
            "mlflow_run_id": mlflow_run.info.run_id,
            "placement": where,
            "model": cfg.model.name,
            "task": cfg.task.name,
        }
        outputs.summary(summary)
    logger.info(
        "done: reward %.3f -> %.3f in %.1fs; image %s",
        summary["reward_first5"],
        summary["reward_last5"],
        summary["wall_time_s"],
        summary["image_path"],
    )
    return summary


def train_loop(run: Run) -> list[float]:
    """The steps; returns the per-step reward. On any exit the latest image and a checkpoint
    are written, so nothing is lost when a run crashes or is interrupted."""
    cfg, ray, learner, workers = run.cfg, run.ray, run.learner, run.workers
    start_step = 0
    if cfg.resume_from:
        start_step = ray.get(learner.load_checkpoint.remote(cfg.resume_from))
        logger.info("resumed from %s at step %d", cfg.resume_from, start_step)
    update = ray.get(learner.image_update.remote())
    broadcast(ray, workers, update)
    run.outputs.write("seed.png", update.png)

    rewards: list[float] = []
    progress = Progress(cfg, start_step)
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()  # 1-3. sample, score, filter
            rollouts = compute_rollouts(
                cfg, ray, workers, run.task, run.sampler, run.prompt_for, step - 1
            )
            t1 = time.perf_counter()  # 4. update
            learn_metrics = {}
            if rollouts.kept:
                learn_metrics, update = ray.get(learner.update.remote(rollouts.kept))
            else:
                logger.warning("step %d: no informative group in %d rounds", step, rollouts.rounds)
            t2 = time.perf_counter()  # 5. broadcast
            if rollouts.kept:
                broadcast(ray, workers, update)
            t3 = time.perf_counter()  # 6. log, checkpoint
            metrics = compute_step_metrics(rollouts, learn_metrics, (t0, t1, t2, t3))
            rewards.append(metrics["reward_mean"])
            run.outputs.mlflow.log_metrics(metrics, step=step)
            progress.report(step, metrics)
            last = step == cfg.steps
            if step % cfg.logging.checkpoint_every == 0 or last:
                save_image_and_checkpoint(run, update, step)
            if run.held_out and (step % cfg.eval.every == 0 or last):  # 7. evaluate
                periodic_eval(run, update, step)
    finally:
        progress.close()
        final = ray.get(learner.image_update.remote())
        run.outputs.write("art.png", final.png)
        ray.get(learner.save_checkpoint.remote(str(run.outputs.checkpoints / "last.pt")))
    return rewards


def save_image_and_checkpoint(run: Run, update, step: int) -> None:
    run.outputs.step_image(step, update.png)
    path = run.outputs.checkpoints / f"step_{step:06d}.pt"
    run.ray.get(run.learner.save_checkpoint.remote(str(path)))


def periodic_eval(run: Run, update, step: int) -> None:
    """Accuracy of the current image on the validation slice, with the evaluation's settings;
    keeps `best.png`."""
    from learner.driver.evaluate import eval_sampling, evaluate_condition

    sampling = eval_sampling(run.cfg, run.task)
    metrics = evaluate_condition(
        run.ray, run.workers, run.task, run.held_out, run.prompt_for, True, sampling
    )
    keys = ("accuracy", "format_rate", "mean_completion_tokens")
    run.outputs.mlflow.log_metrics({f"eval/{k}": metrics[k] for k in keys}, step=step)
    logger.info(
        "step %d validation accuracy %.3f (format %.3f)",
        step,
        metrics["accuracy"],
        metrics["format_rate"],
    )
    if metrics["accuracy"] > run.best_accuracy:
        run.best_accuracy, run.best_step = metrics["accuracy"], step
        run.outputs.write("best.png", update.png, log=True)


def main() -> None:
    run_hydra_app(train)


if __name__ == "__main__":
    main()
