"""ART training driver (Hydra app `art-train`, what `make train` runs).

Each step, as named phases:
1. sample    - draw prompts, spread them over the rollout workers, G completions each;
2. score     - task reward, overlong shaping (DAPO), strict accuracy;
3. filter    - dynamic sampling: drop groups that carry no signal, draw more prompts (capped);
   (sft and distill make their batch of target sequences instead: learner/driver/objectives.py)
4. update    - the learner recomputes log-probs and takes optimizer steps on the pixel logits
               with the objective's loss (DAPO by default, learner/objectives/);
5. broadcast - the new PNG goes once into the Ray object store and to every worker;
6. log       - MLflow metrics; every k steps the PNG and a checkpoint;
7. evaluate  - every `eval.every` steps on a validation slice of the training split (never
               the test split), keeping `best.png`.
Nothing is lost: every output is written atomically; a checkpoint holds everything needed to
continue exactly (`resume_from=`, `resume=auto`); a rollout worker whose process dies is
restarted and its chunk sampled again; a learner that dies, an interrupt or any crash leaves
`art.png` and `checkpoints/last.pt` of the last good step and says how to resume.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.checkpoint import (
    DriverState,
    capture_rng,
    load_checkpoint,
    newest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from learner.driver.cli import run_folder_of, run_hydra_app
from learner.driver.cluster import (
    placement,
    run_scope,
    start_actors,
    task_icon,
    worker_factory,
    worker_python,
)
from learner.driver.learners import LearnerGroup
from learner.driver.rollouts import (
    Prefetch,
    PromptSampler,
    WorkerPool,
    compute_rollouts,
    prompt_builder,
    rollouts_from_state,
    rollouts_to_state,
    split_validation,
    uses_image,
)
from learner.driver.tracking import (
    Progress,
    RunOutputs,
    check_tracking_uri,
    compute_step_metrics,
    ensure_writable,
    export_step,
    mean,
    setup_mlflow,
)
from learner.metrics import RayMetrics
from learner.models import resolve_model_path
from shared.config import validate
from shared.errors import RunStoppedError, UserError

logger = logging.getLogger("art.train")
# Per-step metrics kept in the checkpoint (the summary's rewards and the run's curves).
HISTORY_KEYS = (
    "reward_mean",
    "accuracy",
    "kept_group_frac",
    "generation_rounds",
    "sync_bytes",
    "num_workers",
    "loss",
)
# What distillation adds to them (learner/driver/objectives.py).
DISTILL_KEYS = ("kl", "prompt_tokens_saved", "teacher_sample_accuracy", "student_sample_accuracy")
PHASES = ("time_rollout_s", "time_update_s", "time_broadcast_s", "time_step_s")


@dataclass
class Plan:
    """Everything checked before anything is written or started."""

    run_dir: Path
    task: object
    train_examples: list
    held_out: list
    model_path: str
    prompt_for: object
    checkpoint: Path | None
    learner_state: dict | None
    driver_state: DriverState
    context: str | None = None  # distill: the teacher's text context


@dataclass
class Run:
    """Everything a training run holds, built once by `train`."""

    cfg: DictConfig
    ray: object
    learner: LearnerGroup  # one learner, or its data-parallel replicas
    pool: WorkerPool
    task: object
    sampler: PromptSampler
    prompt_for: object
    held_out: list
    outputs: RunOutputs
    mlflow: object
    state: DriverState
    elastic: object = None  # learner/driver/scale.py: the worker count between steps
    ray_metrics: object = None  # learner/metrics.py: the step's figures for the dashboard
    last_good: tuple | None = None  # (ImageUpdate, learner state, DriverState) of the last step
    ahead: object | None = None  # the next step's rollouts, sampled during the update
    tokens: object = None  # sft, distill: prompt and completion token ids (objectives.py)
    context: str | None = None  # distill: the teacher's text context


def prepare(cfg: DictConfig) -> Plan:
    """Validate the config, load the task, the model's processor, the seed image and the
    checkpoint to resume from; refuse what cannot work before any file or process exists."""
    validate(cfg)
    from learner.driver.objectives import (
        distill_context,
        fill_loss_scale_factor,
        resolve_objective,
    )
    from learner.preprocess import VisionSpec, validate_image_size

    resolve_objective(cfg)  # the loss exists (a user's imports); its defaults into algo.*

    worker_python(cfg)  # the rollout workers' interpreter, before anything starts
    check_tracking_uri(cfg.logging.tracking_uri)
    if cfg.cluster.single_gpu:  # the memory plan of one shared GPU, or a refusal
        from learner.driver.single_gpu import apply_plan

        logger.info("cluster=single_gpu: %s", apply_plan(cfg).describe())
    from shared.images import seed_image
    from shared.tasks import load_task

    checkpoint = Path(cfg.resume_from) if cfg.resume_from else None
    run_dir = run_folder_of(checkpoint) if checkpoint else Path(cfg.run_dir)
    if checkpoint is None and cfg.resume == "auto":
        checkpoint = newest_checkpoint(run_dir)
    task = load_task(cfg.task.name, **cfg.task.options)
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    if cfg.algo.overlong_buffer >= max_new:
        raise UserError(
            f"algo.overlong_buffer={cfg.algo.overlong_buffer} must be < the completion limit "
            f"{max_new} (rollout.max_new_tokens, or the task's {task.max_new_tokens})"
        )
    fill_loss_scale_factor(cfg, max_new)
    context = distill_context(cfg, task) if cfg.algo.loss == "distill" else None
    train_examples, held_out = task.examples(cfg.task.split), []
    if cfg.eval.every:
        train_examples, held_out = split_validation(train_examples, cfg.eval.val_size, cfg.seed)
    height, width = cfg.image.height, cfg.image.width
    seed_image(cfg.image.init, height, width, cfg.seed, task_icon(task.name), cfg.image.background)
    model_path = resolve_model_path(cfg.model.name)
    prompt_for = prompt_builder(cfg, model_path)
    spec = VisionSpec.from_image_processor(prompt_for.processor.image_processor)
    validate_image_size(height, width, spec, cfg.model.name)
    learner_state, driver_state = None, DriverState()
    if checkpoint is not None:
        learner_state, driver_state = load_checkpoint(
            checkpoint, cfg.model.name, height, width, cfg.method.name
        )
        if driver_state.step >= cfg.steps:
            raise UserError(
                f"{checkpoint} is at step {driver_state.step} and the run asks for steps="
                f"{cfg.steps}: nothing to do; set steps above {driver_state.step} to continue"
            )
    ensure_writable(run_dir)
    return Plan(
        run_dir,
        task,
        train_examples,
        held_out,
        model_path,
        prompt_for,
        checkpoint,
        learner_state,
        driver_state,
        context,
    )


def train(cfg: DictConfig) -> dict:
    """Run ART end to end; returns the summary written to `summary.json`."""
    wall_start = time.perf_counter()
    plan = prepare(cfg)
    run_id = plan.run_dir.name  # tags every Ray metric of the run
    ray, owns_ray, learner, workers = start_actors(cfg, plan.model_path, run_id=run_id)
    replicas = learner if isinstance(learner, list) else [learner]
    outputs = RunOutputs(plan.run_dir, with_image=uses_image(cfg))  # the run's first file
    outputs.config(cfg)
    mlflow, mlflow_run = setup_mlflow(cfg, plan.run_dir.name, plan.driver_state.mlflow_run_id)
    outputs.mlflow = mlflow
    sampler = PromptSampler(plan.train_examples, seed=cfg.seed)
    state = plan.driver_state
    state.mlflow_run_id = mlflow_run.info.run_id
    made: dict = {}  # the pool and the scale control, once made: killed at the end either way

    def actors() -> list:
        pool_actors = made["pool"].actors() if "pool" in made else workers
        return [*replicas, *pool_actors, *made.get("control", [])]

    with run_scope(ray, owns_ray, actors, mlflow):
        from learner.driver.scale import Elastic

        pool = made["pool"] = WorkerPool(
            ray,
            workers,
            max_attempts=cfg.rollout.max_restarts + 1,
            factory=worker_factory(cfg, ray, plan.model_path, run_id=run_id),
            started=cfg.rollout.min_workers,
        )
        elastic = Elastic(
            ray, pool, plan.run_dir.name, cfg.rollout.num_workers,
            cfg.rollout.max_workers or cfg.rollout.num_workers,
        )  # fmt: skip
        made["control"] = [elastic.control]
        where = placement(ray, replicas, pool.workers, pool.names)
        logger.info("run folder %s; actors placed on nodes: %s", plan.run_dir, where)
        if pool.pending:
            logger.info("%d rollout workers still starting: they join when up", len(pool.pending))
        learners = LearnerGroup(ray, replicas)  # with N > 1: the replicas' process group
        run = Run(
            cfg, ray, learners, pool, plan.task, sampler, plan.prompt_for, plan.held_out,
            outputs, mlflow, state, elastic, RayMetrics(run=run_id),
            tokens=target_tokens(cfg, plan.prompt_for), context=plan.context,
        )  # fmt: skip
        if plan.checkpoint is not None:
            learners.load_state_dict(plan.learner_state)
            sampler.load_state_dict(state.sampler)
            restore_rng(state.rng)
            pool.restarts = state.worker_restarts
            logger.info("resumed from %s at step %d", plan.checkpoint, state.step)
        final = train_loop(run)
        artifact = outputs.policy(final)
        summary = {
            "steps": cfg.steps,
            "reward_first5": mean(state.rewards[:5]),
            "reward_last5": mean(state.rewards[-5:]),
            "rewards": state.rewards,
            "wall_time_s": round(time.perf_counter() - wall_start, 2),
            "method": cfg.method.name,
            "artifact_path": str(artifact.resolve()),
            "image_path": str(artifact.resolve()) if cfg.method.name == "art" else None,
            "adapter_path": str(artifact.resolve()) if cfg.method.name == "lora" else None,
            "artifact_bytes": artifact_bytes(artifact),
            "image_version": final.version,
            "trainable_parameters": learners.num_trainable(),
            "sync_bytes_mean": mean(state.history.get("sync_bytes", [])),
            "best_eval_accuracy": state.best_accuracy if state.best_step is not None else None,
            "best_step": state.best_step,
            "worker_restarts": pool.restarts,
            "workers_per_step": [int(n) for n in state.history.get("num_workers", [])],
            "workers_lost": pool.lost,
            "learner_replicas": len(replicas),
            "loop_wall_s": round(state.loop_wall_s, 2),
            "mean_phase_s": {k: round(mean(state.history.get(k, [])), 4) for k in PHASES},
            "max_staleness": cfg.algo.max_staleness,
            "resumed_from": str(plan.checkpoint) if plan.checkpoint else None,
            "mlflow_run_id": mlflow_run.info.run_id,
            "placement": where,
            "model": cfg.model.name,
            "task": cfg.task.name,
            "loss": cfg.algo.loss,
            **objective_summary(state),
        }
        outputs.summary(summary)
    logger.info(
        "done: reward %.3f -> %.3f in %.1fs; %s",
        summary["reward_first5"],
        summary["reward_last5"],
        summary["wall_time_s"],
        summary["artifact_path"],
    )
    return summary


def train_loop(run: Run):
    """The steps; returns the final ImageUpdate. Any exit leaves `art.png` and `last.pt` of
    the last good step. With `algo.max_staleness=1` the next step's rollouts are sampled (all
    of its rounds) with the current image while the learner computes the update; the new image
    is broadcast once they are in, so they are exactly one version stale."""
    cfg, learner, state = run.cfg, run.learner, run.state
    if cfg.method.name == "lora" and uses_image(cfg):  # the seed image stays in the prompts
        run.pool.broadcast(learner.image_update())
    update = learner.policy_update()
    run.pool.broadcast(update)
    if state.step == 0 and cfg.method.name == "art":
        run.outputs.write("seed.png", update.png)
    if state.step == 0 and cfg.algo.loss == "distill" and run.held_out:
        teacher_eval(run)
    if state.ahead is not None:
        run.ahead = rollouts_from_state(state.ahead)
    progress, loop_start = Progress(cfg, state.step), time.perf_counter() - state.loop_wall_s
    step = state.step + 1
    try:
        for step in range(state.step + 1, cfg.steps + 1):
            t0 = time.perf_counter()  # 1-3. sample, score, filter
            rollouts = run.ahead or rollouts_for(run, step - 1)
            run.ahead = None
            if cfg.algo.max_staleness and step < cfg.steps:  # overlap: sample step + 1 now
                run.ahead = Prefetch(lambda s=step: rollouts_for(run, s))
            t1 = time.perf_counter()  # 4. update
            learn_metrics = {}
            if rollouts.kept:
                if cfg.rollout.sleep_mode:  # one GPU: the engine frees it for the update
                    run.pool.sleep()
                learn_metrics, update = learner_call(run, step, "update", rollouts.kept)
                if cfg.rollout.sleep_mode:
                    run.pool.wake_up()
            else:
                logger.warning("step %d: no informative group in %d rounds", step, rollouts.rounds)
            if isinstance(run.ahead, Prefetch):
                run.ahead = run.ahead.result()
            t2 = time.perf_counter()  # 5. broadcast
            if update.version != run.pool.update.version:
                run.pool.broadcast(update)
            t3 = time.perf_counter()  # 6. log, evaluate, checkpoint
            metrics = compute_step_metrics(rollouts, learn_metrics, (t0, t1, t2, t3))
            metrics.update(
                worker_restarts=float(run.pool.restarts),
                sync_bytes=float(run.pool.sync_bytes),
                num_workers=float(rollouts.num_workers),  # serving when it was sampled
            )
            state.step, state.loop_wall_s = step, time.perf_counter() - loop_start
            state.record(metrics, HISTORY_KEYS + PHASES + distill_keys(cfg))
            run.mlflow.log_metrics(metrics, step=step)
            export_step(run.ray_metrics, step, metrics, run.pool.lost)
            progress.report(step, metrics)
            check_skips(metrics, cfg.learner.max_consecutive_skips, step)
            last = step == cfg.steps
            if run.held_out and (step % cfg.eval.every == 0 or last):  # 7. evaluate
                periodic_eval(run, update, step)
            mark_good(run, update, step)
            if step % cfg.logging.checkpoint_every == 0 or last:
                save_image_and_checkpoint(run, step)
            if run.elastic is not None:  # workers join or leave between steps
                run.elastic.at_boundary(step, done=last)
    except BaseException as err:
        progress.close()
        if isinstance(run.ahead, Prefetch):
            run.ahead.thread.join(timeout=60)
        stopped_at = save_last_good(run)
        if isinstance(err, KeyboardInterrupt | UserError | RunStoppedError):
            raise
        last = run.outputs.checkpoints / "last.pt"
        hint = (
            f"{run.outputs.run_dir} holds the outputs and checkpoints/last.pt of step "
            f"{stopped_at}. Resume with: art-train resume_from={last}"
            if last.exists()
            else f"no step completed, so there is nothing to resume; {run.outputs.run_dir} "
            "holds the seed outputs"
        )
        raise RunStoppedError(
            f"training stopped in step {step} ({short_error(err)}); {hint}"
        ) from err
    progress.close()
    return update


def rollouts_for(run: Run, step: int):
    """The step's batch: rewarded groups (sample, score, filter), or for sft and distill
    target sequences (learner/driver/objectives.py)."""
    from learner.driver.objectives import distill_rollouts, sft_targets

    cfg = run.cfg
    if cfg.algo.loss == "sft":
        return sft_targets(cfg, run.task, run.sampler, run.prompt_for, run.tokens, step)
    if cfg.algo.loss == "distill":
        return distill_rollouts(
            cfg, run.pool, run.task, run.sampler, run.prompt_for, run.tokens, run.context, step
        )
    return compute_rollouts(cfg, run.pool, run.task, run.sampler, run.prompt_for, step)


def target_tokens(cfg, prompt_for):
    """Token ids for the objectives that build target sequences (None for the others)."""
    if cfg.algo.loss not in ("sft", "distill"):
        return None
    from learner.driver.objectives import PromptTokens

    return PromptTokens(prompt_for.processor, cfg.image.height, cfg.image.width)


def distill_keys(cfg) -> tuple[str, ...]:
    return DISTILL_KEYS if cfg.algo.loss == "distill" else ()


def objective_summary(state: DriverState) -> dict:
    """The loss's first and last steps; for distill the KL gap closed: 1 - KL of the last 5
    steps / KL of the first step (measured on that step's samples before its update, i.e. the
    seed image's), the prompt tokens saved and the teacher's accuracy."""
    losses = state.history.get("loss", [])
    out = {"loss_first5": mean(losses[:5]), "loss_last5": mean(losses[-5:]), "losses": losses}
    kl = state.history.get("kl", [])
    if kl:
        out.update(
            kl_seed=kl[0],
            kl_last5=mean(kl[-5:]),
            kl_gap_closed=1.0 - mean(kl[-5:]) / kl[0] if kl[0] > 0 else float("nan"),
            prompt_tokens_saved=mean(state.history.get("prompt_tokens_saved", [])),
            teacher_accuracy=state.teacher_accuracy,
        )
    return out


def short_error(err: BaseException) -> str:
    """`Type: first line` of an error, the original one for an error raised inside an actor."""
    cause = getattr(err, "cause", None) or err  # RayTaskError wraps the actor's exception
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"


def learner_call(run: Run, step: int, method: str, *args):
    """`learner.<method>(*args)` on every replica; a learner (replica) whose process died stops
    the run with its outputs saved and the command that resumes it (with any
    learner.num_replicas)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    try:
        return getattr(run.learner, method)(*args)
    except (RayActorError, ActorUnavailableError) as err:
        raise RunStoppedError(
            f"the learner died in step {step} ({type(err).__name__}); the run stopped with the "
            f"outputs and checkpoints/last.pt of the last good step in {run.outputs.run_dir}. "
            f"Resume with: art-train resume_from={run.outputs.checkpoints / 'last.pt'}"
        ) from err


def check_skips(metrics: dict, limit: int, step: int) -> None:
    """Stop after `limit` optimizer steps in a row were refused for NaN/inf."""
    skips = int(metrics.get("consecutive_skips", 0))
    if skips >= limit:
        raise RunStoppedError(
            f"{skips} optimizer steps in a row had a NaN or inf loss or gradient (step {step}; "
            f"learner.max_consecutive_skips={limit}); the pixels were never touched by them. "
            "Lower learner.lr, set learner.max_grad_norm, or check the model's dtype and "
            "rewards; resume from checkpoints/last.pt"
        )


def mark_good(run: Run, update, step: int) -> None:
    """Remember the state after a completed step: what a checkpoint, or a crash later on,
    saves (with overlap, the next step's rollouts too: a resume continues exactly)."""
    state = run.state
    state.rng, state.worker_restarts = capture_rng(), run.pool.restarts
    state.sampler = run.sampler.state_dict()
    state.ahead = rollouts_to_state(run.ahead) if run.ahead is not None else None
    learner_state = learner_call(run, step, "state_dict")
    run.last_good = (update, learner_state, copy.deepcopy(state))


def save_image_and_checkpoint(run: Run, step: int) -> None:
    update, learner_state, state = run.last_good
    run.outputs.step_policy(step, update)
    run.outputs.plots(state.history, f"{run.cfg.method.name} on {run.cfg.task.name}")
    path = save_checkpoint(run.outputs.checkpoints / f"step_{step:06d}.pt", learner_state, state)
    save_checkpoint(run.outputs.checkpoints / "last.pt", learner_state, state)
    logger.info("checkpoint %s", path)


def save_last_good(run: Run) -> int:
    """On any exit: art.png (or adapter/) and last.pt of the last completed step."""
    if run.last_good is None:
        if run.pool.update is not None:
            run.outputs.policy(run.pool.update)
        return run.state.step
    update, learner_state, state = run.last_good
    run.outputs.policy(update)
    save_checkpoint(run.outputs.checkpoints / "last.pt", learner_state, state)
    return state.step


def teacher_eval(run: Run) -> None:
    """Distillation: the teacher's greedy accuracy on the validation slice (its context, no
    image), once; `eval/teacher_accuracy` at step 0 and in the summary."""
    from learner.driver.evaluate import eval_sampling, evaluate_condition
    from learner.driver.objectives import teacher_prompt

    def prompt_for(example, with_image: bool = False) -> str:
        return teacher_prompt(run.cfg, run.prompt_for, example, run.context)

    sampling = eval_sampling(run.cfg, run.task)
    metrics = evaluate_condition(
        run.pool, run.task, run.held_out, prompt_for, False, sampling, "teacher"
    )
    run.state.teacher_accuracy = metrics["accuracy"]
    run.mlflow.log_metrics({"eval/teacher_accuracy": metrics["accuracy"]}, step=0)
    logger.info("teacher (context, no image) validation accuracy %.3f", metrics["accuracy"])


def periodic_eval(run: Run, update, step: int) -> None:
    """Accuracy of the current image on the validation slice, with the evaluation's settings;
    keeps `best.png`."""
    from learner.driver.evaluate import eval_sampling, evaluate_condition

    sampling = eval_sampling(run.cfg, run.task)
    with_image = uses_image(run.cfg)
    metrics = evaluate_condition(
        run.pool, run.task, run.held_out, run.prompt_for, with_image, sampling
    )
    keys = ("accuracy", "format_rate", "mean_completion_tokens")
    run.mlflow.log_metrics({f"eval/{k}": metrics[k] for k in keys}, step=step)
    if run.ray_metrics is not None:
        run.ray_metrics.set("art_val_accuracy", metrics["accuracy"], "validation accuracy")
    logger.info(
        "step %d validation accuracy %.3f (format %.3f)",
        step,
        metrics["accuracy"],
        metrics["format_rate"],
    )
    if metrics["accuracy"] > run.state.best_accuracy:
        run.state.best_accuracy, run.state.best_step = metrics["accuracy"], step
        run.outputs.policy(update, "best", log=True)


def artifact_bytes(path: Path) -> int:
    """Bytes on disk of the trained artifact (the PNG, or the adapter folder)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return path.stat().st_size


def main() -> None:
    run_hydra_app(train, "art-train")


if __name__ == "__main__":
    main()
