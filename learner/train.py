"""ART training driver (Hydra app `art-train`, what `make train` runs).

Each step, as named phases:
1. sample   - draw prompts, spread them over the rollout workers, G completions each;
2. score    - task reward, overlong shaping (DAPO), strict accuracy;
3. filter   - dynamic sampling: drop zero-variance groups, draw more prompts (capped rounds);
4. update   - the learner recomputes log-probs and takes DAPO/Adam steps on the pixel logits;
5. broadcast- the new PNG goes once into the Ray object store and to every worker;
6. log      - MLflow metrics; every k steps the PNG artifact and a checkpoint.
The run folder `outputs/<run>/` ends with `art.png` and `summary.json`.

The driver orchestrates both sides but imports neither side's package: worker and learner
classes are created from their import paths (`rollout.worker_cls`, `LEARNER_CLS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from shared.config import register_configs, validate

logger = logging.getLogger("art.train")
LEARNER_CLS = "learner.learner.Learner"

register_configs()


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


def resolve_model_path(name: str) -> str:
    """'tiny' -> the cached embedded model (built once); anything else is passed through."""
    if name == "tiny":
        from learner.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model())
    return name


def generate_across_workers(ray, workers, requests, sampling) -> list[list]:
    """Split requests over the workers (contiguous chunks), gather groups in request order."""
    per = math.ceil(len(requests) / len(workers))
    chunks = [requests[i * per : (i + 1) * per] for i in range(len(workers))]
    futures = [w.generate.remote(c, sampling) for w, c in zip(workers, chunks, strict=True) if c]
    return [group for result in ray.get(futures) for group in result]


def compute_rollouts(cfg, ray, workers, task, sampler, prompts_for, step: int) -> StepRollouts:
    from learner.dapo import keep_informative_groups, overlong_penalty
    from shared.messages import RolloutRequest, SamplingConfig, ScoredGroup

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
        requests = [
            RolloutRequest(request_id=i, prompt=prompts_for(ex), n=algo.group_size)
            for i, ex in enumerate(examples)
        ]
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


def start_ray(cfg):
    """Returns (ray, whether this call started it)."""
    import ray

    if ray.is_initialized():
        return ray, False
    env = {"env_vars": {"ART_CACHE_DIR": os.environ.get("ART_CACHE_DIR", "")}}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.cluster.num_cpus,
            include_dashboard=cfg.cluster.include_dashboard,
            runtime_env=env,
            log_to_driver=True,
        )
    return ray, True


def create_actors(cfg, ray, model_path: str):
    from hydra.utils import get_class

    learner_cls = ray.remote(get_class(LEARNER_CLS))
    learner = learner_cls.options(
        name="learner", num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus
    ).remote(
        model_path=model_path,
        model_name=cfg.model.name,
        height=cfg.image.height,
        width=cfg.image.width,
        init=cfg.image.init,
        lr=cfg.learner.lr,
        temperature=cfg.algo.temperature,
        eps_low=cfg.algo.eps_low,
        eps_high=cfg.algo.eps_high,
        num_minibatches=cfg.algo.num_minibatches,
        micro_batch_size=cfg.learner.micro_batch_size,
        max_grad_norm=cfg.learner.max_grad_norm,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        seed=cfg.seed,
    )
    worker_cls = ray.remote(get_class(cfg.rollout.worker_cls))
    engine_options = {"dtype": cfg.rollout.dtype}
    if cfg.rollout.engine == "vllm":
        engine_options.update(
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            max_model_len=cfg.rollout.max_model_len,
            seed=cfg.seed,
        )
    workers = [
        worker_cls.options(
            name=f"rollout-worker-{i}",
            num_cpus=cfg.rollout.num_cpus_per_worker,
            num_gpus=cfg.rollout.num_gpus_per_worker,
        ).remote(engine=cfg.rollout.engine, model_path=model_path, worker_index=i, **engine_options)
        for i in range(cfg.rollout.num_workers)
    ]
    return learner, workers


def broadcast(ray, workers, update) -> None:
    """One copy of the PNG into the object store; every worker swaps to it."""
    ref = ray.put(update.png)
    versions = ray.get([w.set_image.remote(update.version, ref) for w in workers])
    assert all(v == update.version for v in versions), versions


def setup_mlflow(cfg, run_name: str):
    """Local default: a SQLite store and an artifact folder under the project root."""
    import mlflow

    root = Path(hydra.utils.get_original_cwd() if _in_hydra() else ".")
    uri = cfg.logging.tracking_uri
    if "://" not in uri:  # a bare path: a local SQLite file
        uri = "sqlite:///" + str(root.joinpath(uri).resolve())
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(cfg.logging.experiment) is None:
        artifacts = cfg.logging.artifact_location
        if artifacts and "://" not in artifacts:
            artifacts = root.joinpath(artifacts).resolve().as_uri()
        mlflow.create_experiment(cfg.logging.experiment, artifact_location=artifacts or None)
    mlflow.set_experiment(cfg.logging.experiment)
    run = mlflow.start_run(run_name=run_name)
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items() if k != "run_dir"})
    return mlflow, run


def _in_hydra() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train(cfg: DictConfig) -> dict:
    """Run ART end to end; returns the summary written to `summary.json`."""
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()

    from transformers import AutoProcessor

    from shared.prompts import render_prompt
    from shared.tasks import load_task

    task = load_task(cfg.task.name, **cfg.task.options)
    sampler = PromptSampler(task.examples(cfg.task.split), seed=cfg.seed)
    model_path = resolve_model_path(cfg.model.name)
    templater = AutoProcessor.from_pretrained(model_path)

    def prompts_for(example) -> str:
        return render_prompt(
            templater, example.question, cfg.task.system_prompt, cfg.task.enable_thinking
        )

    ray, owns_ray = start_ray(cfg)
    learner, workers = create_actors(cfg, ray, model_path)
    mlflow, run = setup_mlflow(cfg, cfg.run_name or run_dir.name)
    try:
        rewards = _train_loop(
            cfg, ray, learner, workers, task, sampler, prompts_for, run_dir, mlflow
        )
        final = ray.get(learner.image_update.remote())
        summary = {
            "steps": cfg.steps,
            "reward_first5": _mean(rewards[:5]),
            "reward_last5": _mean(rewards[-5:]),
            "rewards": rewards,
            "wall_time_s": round(time.perf_counter() - wall_start, 2),
            "image_path": str((run_dir / "art.png").resolve()),
            "image_version": final.version,
            "mlflow_run_id": run.info.run_id,
            "model": cfg.model.name,
            "task": cfg.task.name,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(run_dir / "art.png"))
        mlflow.log_artifact(str(run_dir / "summary.json"))
        mlflow.end_run()
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    finally:
        for actor in [learner, *workers]:
            ray.kill(actor)
        if owns_ray:
            ray.shutdown()
    logger.info(
        "done: reward %.3f -> %.3f in %.1fs; image %s",
        summary["reward_first5"],
        summary["reward_last5"],
        summary["wall_time_s"],
        summary["image_path"],
    )
    return summary


def _train_loop(cfg, ray, learner, workers, task, sampler, prompts_for, run_dir, mlflow):
    """The steps; returns the per-step reward. On any exit the latest image and a checkpoint
    are written, so nothing is lost when a run crashes or is interrupted."""
    ckpt_dir = run_dir / "checkpoints"
    start_step = 0
    if cfg.resume_from:
        start_step = ray.get(learner.load_checkpoint.remote(cfg.resume_from))
        logger.info("resumed from %s at step %d", cfg.resume_from, start_step)
    update = ray.get(learner.image_update.remote())
    broadcast(ray, workers, update)
    (run_dir / "seed.png").write_bytes(update.png)

    rewards: list[float] = []
    progress = _progress(cfg, start_step)
    try:
        for step in range(start_step, cfg.steps):
            # 1-3. sample, score, filter
            t0 = time.perf_counter()
            rollouts = compute_rollouts(cfg, ray, workers, task, sampler, prompts_for, step)
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
            mlflow.log_metrics(metrics, step=step + 1)
            _report(progress, step, cfg.steps, metrics)
            if (step + 1) % cfg.logging.checkpoint_every == 0 or step + 1 == cfg.steps:
                _save_image_and_checkpoint(
                    ray, learner, update, run_dir, ckpt_dir, step + 1, mlflow
                )
    finally:
        if progress is not None:
            progress.close()
        final = ray.get(learner.image_update.remote())
        (run_dir / "art.png").write_bytes(final.png)
        ray.get(learner.save_checkpoint.remote(str(ckpt_dir / "last.pt")))
    return rewards


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


def _save_image_and_checkpoint(ray, learner, update, run_dir, ckpt_dir, step, mlflow) -> None:
    png_path = run_dir / "images" / f"step_{step:06d}.png"
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(update.png)
    (run_dir / "art.png").write_bytes(update.png)
    mlflow.log_artifact(str(png_path), artifact_path="images")
    ray.get(learner.save_checkpoint.remote(str(ckpt_dir / f"step_{step:06d}.pt")))


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


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = HydraConfig.get().runtime.output_dir
    OmegaConf.set_struct(cfg, True)
    train(cfg)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _hydra_main()


if __name__ == "__main__":
    main()
