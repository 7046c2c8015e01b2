"""ART training driver (Hydra app `art-train`, what `make train` runs).

Each step, as named phases:
1. sample   - draw prompts, spread them over the rollout workers, G completions each;
2. score    - task reward, overlong shaping (DAPO), strict accuracy;
3. filter   - dynamic sampling: drop zero-variance groups, draw more prompts (capped rounds);
4. update   - the learner recomputes log-probs and takes DAPO/Adam steps on the pixel logits;
5. broadcast- the new PNG goes once into the Ray object store and to every worker;
6. log      - MLflow metrics; every k steps the PNG artifact and a checkpoint.
The run folder `outputs/<run>/` ends with `art.png` and `summary.json`.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from learner.runtime import (
    broadcast,
    create_actors,
    generate_across_workers,
    placement,
    prompt_builder,
    resolve_model_path,
    run_hydra_app,
    run_scope,
    setup_mlflow,
    start_ray,
)
from shared.config import validate

logger = logging.getLogger("art.train")


@dataclass
class StepRollouts:
    """What the sample/score/filter phases produce for one step."""

    kept: list = field(default_factory=list)
    first_round_rewards: list[float] = field(default_factory=list)
    first_round_accuracies: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    groups_seen: int = 0
    rounds: int = 0


class PromptSampler:
    """Cycles through the task's examples in a seeded order, reshuffling each epoch."""

    def __init__(self, examples: Sequence, seed: int):
        if not examples:
            raise ValueError("the task returned no examples for this split")
        self.examples, self.rng, self.order = list(examples), random.Random(seed), []

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order.pop()])
        return out


def rollout_requests(examples, prompts_for, group_size: int) -> list:
    from shared.messages import RolloutRequest

    return [
        RolloutRequest(request_id=i, prompt=prompts_for(ex), n=group_size)
        for i, ex in enumerate(examples)
    ]


def compute_rollouts(cfg, ray, workers, task, sampler, prompts_for, step: int) -> StepRollouts:
    from learner.dapo import keep_informative_groups, overlong_penalty
    from shared.messages import SamplingConfig, ScoredGroup

    algo = cfg.algo
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    out = StepRollouts()
    while len(out.kept) < algo.prompts_per_step and out.rounds <= algo.max_extra_rounds:
        sampling = SamplingConfig(
            temperature=algo.temperature,
            max_new_tokens=max_new,
            top_p=cfg.rollout.top_p,
            seed=cfg.seed * 1_000_000 + step * 100 + out.rounds,
        )
        examples = sampler.take(algo.prompts_per_step)
        requests = rollout_requests(examples, prompts_for, algo.group_size)
        groups = generate_across_workers(ray, workers, requests, sampling)
        scored = []
        for ex, req, comps in zip(examples, requests, groups, strict=True):
            acc = [task.score(ex, c.text) for c in comps]
            rew = [
                task.reward(ex, c.text)
                + overlong_penalty(len(c.token_ids), max_new, algo.overlong_buffer)
                for c in comps
            ]
            scored.append(ScoredGroup(req.prompt, tuple(comps), tuple(rew), tuple(acc)))
            out.lengths.extend(len(c.token_ids) for c in comps)
        if out.rounds == 0:  # the unbiased estimate of the current policy's reward
            out.first_round_rewards = [r for g in scored for r in g.rewards]
            out.first_round_accuracies = [a for g in scored for a in g.accuracies]
        keep = keep_informative_groups([g.rewards for g in scored])
        out.kept.extend(scored[i] for i in keep)
        out.groups_seen += len(scored)
        out.rounds += 1
    out.kept = out.kept[: algo.prompts_per_step]
    return out


@dataclass
class Run:
    """Everything a training run holds, built once by `train`."""

    cfg: DictConfig
    ray: object
    learner: object
    workers: list
    task: object
    sampler: PromptSampler
    prompts_for: object
    held_out: list
    run_dir: Path
    mlflow: object
    best_accuracy: float = -1.0
    best_step: int | None = None


def train(cfg: DictConfig) -> dict:
    """Run ART end to end; returns the summary written to `summary.json`."""
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()

    from shared.tasks import load_task

    task = load_task(cfg.task.name, **cfg.task.options)
    sampler = PromptSampler(task.examples(cfg.task.split), seed=cfg.seed)
    held_out = task.examples(cfg.eval.split, cfg.eval.train_limit) if cfg.eval.every else []
    model_path = resolve_model_path(cfg.model.name)
    prompts_for = prompt_builder(cfg, model_path)

    ray, owns_ray = start_ray(cfg)
    learner, workers = create_actors(cfg, ray, model_path)
    where = placement(ray, learner, workers)
    logger.info("actors placed on nodes: %s", where)
    mlflow, mlflow_run = setup_mlflow(cfg, cfg.run_name or run_dir.name)
    run = Run(cfg, ray, learner, workers, task, sampler, prompts_for, held_out, run_dir, mlflow)
    with run_scope(ray, owns_ray, [learner, *workers], mlflow):
        rewards = _train_loop(run)
        final = ray.get(learner.image_update.remote())
        summary = {
            "steps": cfg.steps,
            "reward_first5": _mean(rewards[:5]),
            "reward_last5": _mean(rewards[-5:]),
            "rewards": rewards,
            "wall_time_s": round(time.perf_counter() - wall_start, 2),
            "image_path": str((run_dir / "art.png").resolve()),
            "image_version": final.version,
            "best_eval_accuracy": run.best_accuracy if run.best_step is not None else None,
            "best_step": run.best_step,
            "mlflow_run_id": mlflow_run.info.run_id,
            "placement": where,
            "model": cfg.model.name,
            "task": cfg.task.name,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(run_dir / "art.png"))
        mlflow.log_artifact(str(run_dir / "summary.json"))
    logger.info(
        "done: reward %.3f -> %.3f in %.1fs; image %s",
        summary["reward_first5"],
        summary["reward_last5"],
        summary["wall_time_s"],
        summary["image_path"],
    )
    return summary


def _train_loop(run: Run) -> list[float]:
    """The steps; returns the per-step reward. On any exit the latest image and a checkpoint
    are written, so nothing is lost when a run crashes or is interrupted."""
    cfg, ray, learner, workers = run.cfg, run.ray, run.learner, run.workers
    ckpt_dir = run.run_dir / "checkpoints"
    start_step = 0
    if cfg.resume_from:
        start_step = ray.get(learner.load_checkpoint.remote(cfg.resume_from))
        logger.info("resumed from %s at step %d", cfg.resume_from, start_step)
    update = ray.get(learner.image_update.remote())
    broadcast(ray, workers, update)
    (run.run_dir / "seed.png").write_bytes(update.png)

    rewards: list[float] = []
    progress = _progress(cfg, start_step)
    try:
        for step in range(start_step, cfg.steps):
            # 1-3. sample, score, filter
            t0 = time.perf_counter()
            rollouts = compute_rollouts(
                cfg, ray, workers, run.task, run.sampler, run.prompts_for, step
            )
            # 4. update
            t1 = time.perf_counter()
            learn_metrics = {}
            if rollouts.kept:
                learn_metrics, update = ray.get(learner.update.remote(rollouts.kept))
            else:  # all groups had equal rewards even after the extra rounds
                logger.warning(
                    "step %d: no informative group after %d rounds", step + 1, rollouts.rounds
                )
            # 5. broadcast
            t2 = time.perf_counter()
            if rollouts.kept:
                broadcast(ray, workers, update)
            t3 = time.perf_counter()
            # 6. log, checkpoint
            metrics = compute_step_metrics(rollouts, learn_metrics, (t0, t1, t2, t3))
            rewards.append(metrics["reward_mean"])
            run.mlflow.log_metrics(metrics, step=step + 1)
            _report(progress, step, cfg.steps, metrics)
            last = step + 1 == cfg.steps
            if (step + 1) % cfg.logging.checkpoint_every == 0 or last:
                _save_image_and_checkpoint(run, update, ckpt_dir, step + 1)
            # 7. periodic held-out evaluation, keeping the best image
            if run.held_out and ((step + 1) % cfg.eval.every == 0 or last):
                _periodic_eval(run, update, step + 1)
    finally:
        if progress is not None:
            progress.close()
        final = ray.get(learner.image_update.remote())
        (run.run_dir / "art.png").write_bytes(final.png)
        ray.get(learner.save_checkpoint.remote(str(ckpt_dir / "last.pt")))
    return rewards


def _periodic_eval(run: Run, update, step: int) -> None:
    from learner.evaluate import evaluate_condition

    max_new = run.cfg.eval.max_new_tokens or run.task.max_new_tokens
    metrics = evaluate_condition(
        run.ray, run.workers, run.task, run.held_out, run.prompts_for, True, max_new
    )
    run.mlflow.log_metrics(
        {f"eval/{k}": metrics[k] for k in ("accuracy", "format_rate", "mean_completion_tokens")},
        step=step,
    )
    logger.info(
        "step %d held-out accuracy %.3f (format %.3f)",
        step,
        metrics["accuracy"],
        metrics["format_rate"],
    )
    if metrics["accuracy"] > run.best_accuracy:
        run.best_accuracy, run.best_step = metrics["accuracy"], step
        (run.run_dir / "best.png").write_bytes(update.png)
        run.mlflow.log_artifact(str(run.run_dir / "best.png"))


def compute_step_metrics(rollouts: StepRollouts, learn_metrics: dict, times) -> dict[str, float]:
    t0, t1, t2, t3 = times
    rewards, accs = rollouts.first_round_rewards, rollouts.first_round_accuracies
    return {
        "reward_mean": _mean(rewards),
        "reward_std": _std(rewards),
        "accuracy": _mean(accs),
        "kept_group_frac": len(rollouts.kept) / max(rollouts.groups_seen, 1),
        "generation_rounds": float(rollouts.rounds),
        "completion_len_mean": _mean(rollouts.lengths),
        "completion_len_max": float(max(rollouts.lengths)),
        "time_rollout_s": t1 - t0,
        "time_update_s": t2 - t1,
        "time_broadcast_s": t3 - t2,
        "time_step_s": t3 - t0,
        **learn_metrics,
    }


def _save_image_and_checkpoint(run: Run, update, ckpt_dir: Path, step: int) -> None:
    png_path = run.run_dir / "images" / f"step_{step:06d}.png"
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(update.png)
    (run.run_dir / "art.png").write_bytes(update.png)
    run.mlflow.log_artifact(str(png_path), artifact_path="images")
    run.ray.get(run.learner.save_checkpoint.remote(str(ckpt_dir / f"step_{step:06d}.pt")))


def _progress(cfg, start_step: int):
    if not cfg.logging.progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start_step, desc="art", unit="step", dynamic_ncols=True)


def _report(progress, step: int, total: int, m: dict) -> None:
    if progress is not None:
        progress.set_postfix(reward=f"{m['reward_mean']:.3f}", step_s=f"{m['time_step_s']:.1f}")
        progress.update(1)
        return
    logger.info(
        "step %d/%d reward %.3f acc %.3f kept %.2f loss %.4f mismatch %.2e step %.1fs",
        step + 1,
        total,
        m["reward_mean"],
        m["accuracy"],
        m["kept_group_frac"],
        m.get("loss", float("nan")),
        m.get("mismatch_abs_mean", float("nan")),
        m["time_step_s"],
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: Sequence[float]) -> float:
    mu = _mean(xs)
    return (sum((x - mu) ** 2 for x in xs) / len(xs)) ** 0.5 if xs else float("nan")


def main() -> None:
    run_hydra_app(train)


if __name__ == "__main__":
    main()
