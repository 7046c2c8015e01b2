"""ART training driver (Hydra app `art-train`, what `make train` runs).

Each step, as named phases:
1. sample    - draw prompts, spread them over the rollout workers, G completions each;
2. score     - task reward, overlong shaping (DAPO), strict accuracy;
3. filter    - dynamic sampling: drop groups that carry no signal, draw more prompts (capped);
   (each algorithm makes its step's batch: learner/driver/algorithms/; sft and distillation
   make target sequences instead)
4. update    - the learner recomputes log-probs and takes optimizer steps on the pixel logits
               with the objective's loss (DAPO by default, learner/objectives/);
5. broadcast - the new PNG goes once into the Ray object store and to every worker;
6. log       - MLflow metrics; every k steps the PNG and a checkpoint;
7. evaluate  - every `eval.every` steps on a validation slice of the training split (never
               the test split), keeping `best.png`.
Nothing is lost: every output is written atomically; a checkpoint holds everything needed to
continue exactly (`resume_from=`, `resume=auto`, which fall back to the newest checkpoint that
loads); a rollout worker whose process dies is restarted and its chunk sampled again; a learner
that dies, an interrupt, SIGTERM, a full disk or any crash leaves `art.png` and
`checkpoints/last.pt` of the last good step and says how to resume. One driver per run folder
(learner/driver/runlock.py); MLflow only observes (learner/driver/observer.py): the run's
metrics are in its `metrics.jsonl` whatever the store does. docs/reliability.md has the table.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.algorithms import Algorithm, check_config
from learner.driver.card import strict_json, write_card
from learner.driver.checkpoint import (
    DriverState,
    capture_rng,
    estimate_checkpoint_bytes,
    missing_checkpoint,
    prune_checkpoints,
    restore_rng,
    resume_point,
    save_checkpoint,
    step_files,
)
from learner.driver.cli import run_folder_of, run_hydra_app
from learner.driver.cluster import (
    placement,
    run_scope,
    start_actors,
    worker_factory,
    worker_python,
)
from learner.driver.learners import LearnerGroup
from learner.driver.multitask import is_multitask_run, train_tasks
from learner.driver.observer import Tracker
from learner.driver.rollouts import (
    Prefetch,
    PromptSampler,
    WorkerPool,
    prompt_builder,
    rollouts_from_state,
    rollouts_to_state,
    split_validation,
    uses_image,
)
from learner.driver.runlock import LockLost, RunLock
from learner.driver.tracking import (
    Progress,
    RunOutputs,
    check_tracking_uri,
    compute_step_metrics,
    ensure_writable,
    export_step,
    mean,
    run_params,
)
from learner.driver.validation import eval_sampling, evaluate_condition
from learner.metrics import ray_metrics
from learner.models import resolve_model_path
from shared.errors import RunStoppedError, UserError
from shared.images import seed_image
from shared.storage import describe, free_bytes, mib, room_problem, storage_error
from shared.tasks.scoring import open_task

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
PHASES = ("time_rollout_s", "time_update_s", "time_broadcast_s", "time_step_s", "time_score_s")


@dataclass
class Plan:
    """Everything checked before anything is written or started."""

    run_dir: Path
    task: object
    scorer: object  # shared/tasks/scoring.py: the task's rewards and strict score
    train_examples: list
    held_out: list
    model_path: str
    prompt_for: object
    checkpoint: Path | None
    learner_state: dict | None
    driver_state: DriverState
    lock: RunLock  # held from here to the end of the run
    algorithm: Algorithm  # learner/driver/algorithms/: what differs between objectives
    outputs: RunOutputs | None = None  # once the run folder is written


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
    scorer: object = None  # shared/tasks/scoring.py: rewards and strict scores
    last_good: tuple | None = None  # (ImageUpdate, learner state, DriverState) of the last step
    ahead: object | None = None  # the next step's rollouts, sampled during the update
    lock: RunLock | None = None  # the run folder's; lost to another driver: stop, write nothing
    algorithm: Algorithm | None = None  # the step's batch, its figures, the summary's fields
    uninformative: int = 0  # steps in a row without an informative group


def prepare(cfg: DictConfig) -> Plan:
    """Validate the config, load the task, the model's processor and the seed image, take the
    run folder's lock, load the checkpoint to resume from and check the disk's room; refuse
    what cannot work before any process exists (and, but for the lock, any file)."""
    algorithm = check_config(cfg)  # the sections' rules and the algorithm's (a user's imports)
    # start-up time: loaded when this runs, not at import
    from learner.preprocess import VisionSpec, validate_image_size

    worker_python(cfg)  # the rollout workers' interpreter, before anything starts
    check_tracking_uri(cfg.logging.tracking_uri)
    if cfg.cluster.single_gpu:  # the memory plan of one shared GPU, or a refusal
        # start-up time: loaded when this runs, not at import
        from learner.driver.single_gpu import apply_plan

        logger.info("cluster=single_gpu: %s", apply_plan(cfg).describe())

    task, train_examples, scorer = open_task(cfg.task, cfg.task.split)  # rewards checked
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    if cfg.algo.overlong_buffer >= max_new:
        raise UserError(
            f"algo.overlong_buffer={cfg.algo.overlong_buffer} must be < the completion limit "
            f"{max_new} (rollout.max_new_tokens, or the task's {task.max_new_tokens})"
        )
    algorithm.resolve(cfg, max_new)  # its defaults into algo.*: config.yaml says what ran
    algorithm.prepare(cfg, task)  # a teacher's context or folder, refused here if unusable
    held_out = []
    if cfg.eval.every:
        train_examples, held_out = split_validation(train_examples, cfg.eval.val_size, cfg.seed)
    height, width = cfg.image.height, cfg.image.width
    seed_image(
        cfg.image.init, height, width, cfg.seed, getattr(task, "icon", "math"), cfg.image.background
    )
    model_path = resolve_model_path(cfg.model.name)
    prompt_for = prompt_builder(cfg, model_path)
    spec = VisionSpec.from_image_processor(prompt_for.processor.image_processor)
    validate_image_size(height, width, spec, cfg.model.name)
    given = Path(cfg.resume_from) if cfg.resume_from else None
    run_dir = run_folder_of(given) if given else Path(cfg.run_dir)
    if given is not None and not given.is_file() and not step_files(given.parent):
        raise missing_checkpoint(given)
    ensure_writable(run_dir)
    resuming = given is not None or cfg.resume == "auto"
    if not resuming:  # a resume checks once it knows its checkpoint (and pruned old ones)
        check_room(cfg, run_dir, model_path, None)
    lock = take_lock(run_dir, cfg.lock_stale_s)  # before its checkpoints are read
    try:
        found = None
        if resuming:
            found = resume_point(
                run_dir / "checkpoints", cfg.model.name, height, width, cfg.method.name, given
            )
        checkpoint, learner_state, driver_state = found or (None, None, DriverState())
        if checkpoint is not None and driver_state.step >= cfg.steps:
            raise UserError(
                f"{checkpoint} is at step {driver_state.step} and the run asks for steps="
                f"{cfg.steps}: nothing to do; set steps above {driver_state.step} to continue"
            )
        resume_worker_count(cfg, driver_state)
        if checkpoint is not None:  # a bound given now applies to what is there
            keep = cfg.logging.keep_checkpoints
            protect = {driver_state.step, driver_state.best_step}
            for old in prune_checkpoints(run_dir / "checkpoints", keep, protect):
                logger.info("removed %s (logging.keep_checkpoints=%d)", old, keep)
        check_room(cfg, run_dir, model_path, checkpoint, warn=True)
    except BaseException:
        scorer.close()
        release(lock)
        raise
    return Plan(
        run_dir,
        task,
        scorer,
        train_examples,
        held_out,
        model_path,
        prompt_for,
        checkpoint,
        learner_state,
        driver_state,
        lock,
        algorithm,
    )


def take_lock(run_dir: Path, stale_s: float) -> RunLock:
    """The run folder's lock (learner/driver/runlock.py); a disk that cannot take even its
    small file is a user error like a full one."""
    try:
        return RunLock(run_dir, stale_s).acquire()
    except OSError as err:
        fault = storage_error(err)
        if fault is None:
            raise
        raise UserError(
            f"{describe(fault)}, the run folder's lock; free space there or set output_dir to a "
            "folder with room"
        ) from err


def release(lock: RunLock) -> None:
    """Give the run folder back (and remove it if this driver made it and wrote nothing)."""
    lock.release()
    if lock.created_dir:
        with contextlib.suppress(OSError):
            lock.run_dir.rmdir()


def resume_worker_count(cfg: DictConfig, state: DriverState) -> None:
    """A resumed run gets the rollout worker count it had (art-scale may have changed it),
    unless its command now gives another `rollout.num_workers`."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import open_dict

    configured, wanted = cfg.rollout.num_workers, state.workers_wanted
    same_command = state.workers_config in (None, configured)
    state.workers_config = configured
    if not wanted or wanted == configured:
        return
    if not same_command:
        logger.info(
            "rollout.num_workers=%d given: the run had %d rollout workers, it resumes with %d",
            configured,
            wanted,
            configured,
        )
        return
    count = max(min(wanted, cfg.rollout.max_workers or wanted), cfg.rollout.min_workers or 1)
    with open_dict(cfg):
        cfg.rollout.num_workers = count
    logger.info(
        "resuming with %d rollout workers, the count the run had (art-scale); the command's "
        "rollout.num_workers=%d; art-scale changes it again",
        count,
        configured,
    )


# A run needs room for this many checkpoints at once: the newest step file, last.pt, and one
# being written beside its target.
ROOM_CHECKPOINTS = 3


def check_room(
    cfg: DictConfig, run_dir: Path, model_path: str, checkpoint: Path | None, warn: bool = False
) -> None:
    """Refuse a run whose output folder has no room for a few checkpoints (the size of the one
    it resumes from, or an estimate from the config); `warn` when all it would keep do not
    fit."""

    size = checkpoint.stat().st_size if checkpoint else estimate_checkpoint_bytes(cfg, model_path)
    size += 6 * cfg.image.height * cfg.image.width  # the step's PNGs beside it
    what = f"this run ({ROOM_CHECKPOINTS} checkpoints of about {mib(size)})"
    problem = room_problem(run_dir, ROOM_CHECKPOINTS * size, what)
    if problem:
        raise UserError(problem)
    keep = cfg.logging.keep_checkpoints
    kept = (keep + 1 if keep else cfg.steps // cfg.logging.checkpoint_every) + 2
    if warn and kept * size > free_bytes(run_dir):
        fits = max(free_bytes(run_dir) // size - 3, 1)
        logger.warning(
            "the output folder %s has %s free and the %d checkpoints this run keeps need about "
            "%s: set logging.keep_checkpoints=%d (or free space)",
            run_dir,
            mib(free_bytes(run_dir)),
            kept,
            mib(kept * size),
            fits,
        )


def storage_stop(fault: OSError, run_dir: Path, saved: tuple | None) -> RunStoppedError:
    """A write that failed mid-run: what it was, and what is safe (`saved`: the path and step
    of the newest checkpoint written)."""
    if saved is not None and saved[0].is_file():
        last = run_dir / "checkpoints" / "last.pt"
        safe = (
            f"{saved[0]} (step {saved[1]}) is intact (every file is written atomically). Free "
            "space (logging.keep_checkpoints=N bounds what a run keeps) and resume with: "
            f"art-train resume_from={last}"
        )
    else:
        safe = "no checkpoint was written yet, so there is nothing to resume; free space first"
    return RunStoppedError(f"{describe(fault)}; {safe}")


def train(cfg: DictConfig) -> dict:
    """Run ART end to end; returns the summary written to `summary.json`. The run folder is
    this driver's from `prepare` to the end; a write that fails ends the run in one line."""
    wall_start = time.perf_counter()
    if cfg.get("tasks") or cfg.get("tasks_file") or is_multitask_run(cfg):  # multitask.py
        return train_tasks(cfg, check_config(cfg))
    plan = prepare(cfg)
    try:
        return train_run(cfg, plan, wall_start)
    except OSError as err:
        fault = storage_error(err)
        if fault is None:
            raise
        saved = plan.outputs.saved if plan.outputs is not None else None
        raise storage_stop(fault, plan.run_dir, saved) from err
    finally:
        plan.scorer.close()  # the reward processes (user functions), if any
        release(plan.lock)  # and the run folder, if this driver made it and nothing was written


def train_run(cfg: DictConfig, plan: Plan, wall_start: float) -> dict:
    run_id = plan.run_dir.name  # tags every Ray metric of the run
    ray, owns_ray, learner, workers = start_actors(cfg, plan.model_path, run_id=run_id)
    replicas = learner if isinstance(learner, list) else [learner]
    outputs = plan.outputs = RunOutputs(plan.run_dir, with_image=uses_image(cfg))
    if plan.checkpoint is not None:
        outputs.saved = (plan.checkpoint, plan.driver_state.step)
    outputs.config(cfg)  # the run's first file (but for its lock)
    state = plan.driver_state
    mlflow = Tracker(
        cfg, plan.run_dir, plan.run_dir.name, state.mlflow_run_id, state.step, run_params(cfg)
    )
    outputs.mlflow = mlflow
    sampler = PromptSampler(plan.train_examples, seed=cfg.seed)
    made: dict = {}  # the pool and the scale control, once made: killed at the end either way

    def actors() -> list:
        pool_actors = made["pool"].actors() if "pool" in made else workers
        return [*replicas, *pool_actors, *made.get("control", [])]

    with run_scope(ray, owns_ray, actors, mlflow):
        # start-up time: loaded when this runs, not at import
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
            outputs, mlflow, state, elastic, ray_metrics(run=run_id), scorer=plan.scorer,
            lock=plan.lock, algorithm=plan.algorithm,
        )  # fmt: skip
        if plan.checkpoint is not None:
            learners.load_state_dict(plan.learner_state)
            sampler.load_state_dict(state.sampler)
            restore_rng(state.rng)
            pool.restarts = state.worker_restarts
            logger.info("resumed from %s at step %d", plan.checkpoint, state.step)
        final = train_loop(run)
        artifact = outputs.policy(final)
        tracking = mlflow.flush()  # bounded: what did not reach MLflow is in metrics.jsonl
        summary = run_summary(run, plan, artifact, final, tracking, where, wall_start)
        outputs.summary(summary)
        write_card(plan.run_dir)  # README.md: what the run is, how it did, how to serve it
    final_report = mlflow.report()  # after the run's end reached MLflow, or the wait ran out
    if any(final_report[k] != tracking[k] for k in ("unsent_values", "unsent_calls")):
        summary["tracking"], summary["mlflow_run_id"] = final_report, mlflow.run_id
        outputs.write("summary.json", strict_json(summary))
        write_card(plan.run_dir)
    logger.info(
        "done: reward %.3f -> %.3f in %.1fs; %s",
        summary["reward_first5"],
        summary["reward_last5"],
        summary["wall_time_s"],
        summary["artifact_path"],
    )
    return summary


def check_uninformative(run: Run, step: int, rounds: int) -> None:
    """A step without one informative group took no update: say why at the first, and stop
    (one line, status 1) after `algo.max_uninformative_steps` in a row: a run whose groups all
    score alike cannot learn (dynamic sampling keeps no group)."""
    run.uninformative += 1
    limit = run.cfg.algo.max_uninformative_steps
    why = (
        f"every group's strict accuracies were equal (all right or all wrong) in {rounds} "
        "round(s), so dynamic sampling (algo.filter_metric=acc) kept none and the image did not "
        "change; check the strict score (task.score; by default 1 when every rewarding "
        "function reaches its maximum), or set algo.filter_metric=reward"
    )
    if run.uninformative == 1:
        logger.warning("step %d: no informative group: %s", step, why)
    if limit and run.uninformative >= limit:
        stop = RunStoppedError(
            f"no informative group in {run.uninformative} steps in a row "
            f"(algo.max_uninformative_steps={limit}): {why}"
        )
        stop.needs_hint = True
        raise stop


def run_summary(run: Run, plan: Plan, artifact, final, tracking, where, wall_start) -> dict:
    """What `summary.json` holds at the end of a run."""
    cfg, state, pool, learners, mlflow = run.cfg, run.state, run.pool, run.learner, run.mlflow
    replicas = learners.replicas
    return {
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
        "mlflow_run_id": mlflow.run_id,
        "tracking": tracking,
        "placement": where,
        "model": cfg.model.name,
        "task": cfg.task.name,
        "reward_functions": reward_summary(state.history, plan.scorer.names),
        "loss": cfg.algo.loss,
        **plan.algorithm.summary(state),
    }


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
    run.algorithm.start(run)  # its token ids; distillation's teacher evaluated at step 0
    if state.ahead is not None:
        run.ahead = rollouts_from_state(state.ahead)
    progress, loop_start = Progress(cfg, state.step), time.perf_counter() - state.loop_wall_s
    step = state.step + 1
    try:
        for step in range(state.step + 1, cfg.steps + 1):
            if run.lock is not None:
                run.lock.check()  # another driver took the run folder over: stop
            t0 = time.perf_counter()  # 1-3. sample, score, filter
            rollouts = run.ahead or run.algorithm.batch(run, step - 1)
            run.ahead = None
            if cfg.algo.max_staleness and step < cfg.steps:  # overlap: sample step + 1 now
                run.ahead = Prefetch(lambda s=step: run.algorithm.batch(run, s))
            t1 = time.perf_counter()  # 4. update
            learn_metrics = {}
            if rollouts.kept:
                if cfg.rollout.sleep_mode:  # one GPU: the engine frees it for the update
                    run.pool.sleep()
                learn_metrics, update = learner_call(run, step, "update", rollouts.kept)
                run.uninformative = 0
                if cfg.rollout.sleep_mode:
                    run.pool.wake_up()
            else:
                check_uninformative(run, step, rollouts.rounds)
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
            state.record(
                metrics, HISTORY_KEYS + PHASES + reward_keys(run) + run.algorithm.history_keys
            )
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
        if isinstance(err, LockLost):  # the folder is another driver's now: write nothing
            raise
        fault = storage_error(err)
        try:
            stopped_at = save_last_good(run)
        except OSError as again:  # the disk that failed the step fails this too
            if storage_error(again) is None:
                raise
            fault = fault or storage_error(again)
            logger.warning("could not save the last good step: %s", describe(fault))
            stopped_at = None
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C, SIGTERM: the CLI says what is kept
            err.saved = (run.outputs.run_dir, (run.outputs.saved or (None, 0))[1],
                         (run.outputs.checkpoints / "last.pt").is_file())  # fmt: skip
            raise
        if fault is not None:
            raise storage_stop(fault, run.outputs.run_dir, run.outputs.saved) from err
        last = run.outputs.checkpoints / "last.pt"
        hint = (
            f"{run.outputs.run_dir} holds the outputs and checkpoints/last.pt of step "
            f"{stopped_at}. Resume with: art-train resume_from={last}"
            if last.exists()
            else f"no step completed, so there is nothing to resume; {run.outputs.run_dir} "
            "holds the seed outputs"
        )
        if isinstance(err, RunStoppedError) and getattr(err, "needs_hint", False):
            raise RunStoppedError(f"{err}; {hint}") from err  # rewards failed, nothing learned
        if isinstance(err, UserError | RunStoppedError):
            raise
        raise RunStoppedError(
            f"training stopped in step {step} ({short_error(err)}); {hint}"
        ) from err
    progress.close()
    return update


def reward_keys(run: Run) -> tuple[str, ...]:
    """Each reward function's per-step figures kept in the checkpoint (summary.json)."""
    names = run.scorer.names if run.scorer is not None else []
    return tuple(f"rewards/{n}/{k}" for n in names for k in ("mean", "failures"))


def reward_summary(history: dict, names: list[str]) -> dict:
    """Per reward function: its mean over the first and last 5 steps, its failures."""
    out = {}
    for n in names:
        values = history.get(f"rewards/{n}/mean", [])
        failures = [f for f in history.get(f"rewards/{n}/failures", []) if f == f]
        out[n] = {
            "mean_first5": mean(values[:5]),
            "mean_last5": mean(values[-5:]),
            "failures": int(sum(failures)),
        }
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
    # start-up time: a heavy library, loaded when this runs
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
    state.mlflow_run_id = run.mlflow.run_id or state.mlflow_run_id
    state.sampler = run.sampler.state_dict()
    state.ahead = rollouts_to_state(run.ahead) if run.ahead is not None else None
    learner_state = learner_call(run, step, "state_dict")
    run.last_good = (update, learner_state, copy.deepcopy(state))


def save_image_and_checkpoint(run: Run, step: int) -> None:
    update, learner_state, state = run.last_good
    run.outputs.step_policy(step, update)
    run.outputs.plots(state.history, f"{run.cfg.method.name} on {run.cfg.task.name}")
    state.workers_wanted = run.elastic.wanted if run.elastic is not None else None
    path = save_checkpoint(run.outputs.checkpoints / f"step_{step:06d}.pt", learner_state, state)
    save_last(run, learner_state, state)
    keep = run.cfg.logging.keep_checkpoints
    for old in prune_checkpoints(run.outputs.checkpoints, keep, {step, state.best_step}):
        logger.info("removed %s (logging.keep_checkpoints=%d)", old.name, keep)
    logger.info("checkpoint %s", path)


def save_last(run: Run, learner_state: dict, state: DriverState) -> None:
    last = save_checkpoint(run.outputs.checkpoints / "last.pt", learner_state, state)
    run.outputs.saved = (last, state.step)


def save_last_good(run: Run) -> int:
    """On any exit: art.png (or adapter/) and last.pt of the last completed step (with the
    worker count the run wants now: a resume starts with it)."""
    if run.last_good is None:
        if run.pool.update is not None:
            run.outputs.policy(run.pool.update)
        return run.state.step
    update, learner_state, state = run.last_good
    state.workers_wanted = run.elastic.wanted if run.elastic is not None else None
    run.outputs.policy(update)
    save_last(run, learner_state, state)
    return state.step


def periodic_eval(run: Run, update, step: int) -> None:
    """Accuracy of the current image on the validation slice, with the evaluation's settings;
    keeps `best.png`."""
    sampling = eval_sampling(run.cfg, run.task)
    with_image = uses_image(run.cfg)
    metrics = evaluate_condition(
        run.pool, run.scorer or run.task, run.held_out, run.prompt_for, with_image, sampling
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
