"""K tasks in one run on one frozen model (`art-train tasks=<preset>` or `tasks_file=<yaml>`):
the engines and the learner are shared, every task keeps its own image, optimizer and outputs.

Each step, for every task that is still training:
1. sample  - each task's round of requests (its own prompts, image and seeds) goes to the
             engines in one batch with the other tasks' (`RolloutRounds`, one round at a time:
             a task's extra rounds of dynamic sampling go with the others' extra rounds);
2. score   - each task with its own rewards; a task whose rewards fail past the threshold
             stops alone, with its outputs, and the others go on;
3. update  - one learner call: each task's update on its own samples, in its own slot
             (learner/task_slots.py): the same update a learner of that task alone would take;
4. broadcast, log, evaluate, checkpoint - per task, under `<run>/tasks/<name>/`.
A task leaves when its steps are done, when its validation accuracy reaches
`stop_at_accuracy`, or when `art-tasks remove` asks; `art-tasks add` adds one at the next step,
from its seed image. The rollout budget is shared by `weight` (a task's groups per step are
`algo.prompts_per_step x weight`, at least 1).

What is guaranteed: a task's samples, rewards, image versions and updates are those of a run
of that task alone with the same seed (`seed` of its entry, default the run's), the same
settings and the same number of workers' worth of seeds: every request carries its task's own
seed and image, the learner's minibatch split has a generator per task, and no tensor of one
task's update is computed from another's samples (tests/integration/test_multitask.py checks a
task's art.png against its solo run's). Not shared across tasks: prompts, seeds, optimizer
state, checkpoints. Shared: the model (one copy per side), the engines, the learner process,
the driver's per-step overhead.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from learner.driver.card import strict_json, write_card
from learner.driver.checkpoint import DriverState, capture_rng, load_checkpoint, save_checkpoint
from learner.driver.cluster import run_scope, start_actors
from learner.driver.observer import Tracker, parent_run
from learner.driver.rollouts import (
    PromptSampler,
    RewardFunctionError,
    RolloutRounds,
    WorkerPool,
    prompt_builder,
    split_validation,
)
from learner.driver.runlock import RunLock
from learner.driver.tracking import RunOutputs, compute_step_metrics, mean, run_params
from learner.driver.validation import eval_sampling, evaluate_condition
from learner.models import resolve_model_path
from learner.preprocess import VisionSpec, validate_image_size
from shared.atomic import write_bytes_atomic
from shared.config import TaskConfig
from shared.errors import UserError
from shared.images import seed_image
from shared.tasks import task_icon
from shared.tasks.scoring import open_task

logger = logging.getLogger("art.tasks")
TASK_FIELDS = {f.name for f in fields(TaskConfig)}
# What a task's entry may set beside its task fields (the model and the image size are the run's).
ENTRY_FIELDS = {"steps", "weight", "init", "seed", "stop_at_accuracy"}
CONTROL = "tasks.control.jsonl"  # art-tasks add/remove requests, read at each step boundary
MANIFEST = "tasks.json"  # every task's state, written each step (art-tasks list)
ENTRIES = "tasks.entries.json"  # every task's entry: what a resumed run trains
HISTORY_KEYS = ("reward_mean", "accuracy", "kept_group_frac", "generation_rounds", "loss")


def task_entries(cfg) -> dict[str, dict]:
    """The run's tasks: `tasks` (a preset of conf/tasks/) and `tasks_file`, checked."""
    entries = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.tasks else {}
    if cfg.tasks_file:
        path = Path(cfg.tasks_file).expanduser()
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as err:  # a missing file or its own syntax error, one line either way
            raise UserError(f"tasks_file={path}: cannot be read as YAML ({err})") from err
        if not isinstance(loaded, dict):
            raise UserError(f"tasks_file={path}: give a mapping {{task name: its settings}}")
        entries.update(loaded)
    for name, entry in entries.items():
        check_entry(str(name), entry)
    return {str(k): dict(v or {}) for k, v in entries.items()}


def check_entry(name: str, entry) -> None:
    if not name.replace("-", "_").isidentifier():
        raise UserError(f"tasks.{name}: a task's name is a folder and a model name: letters, "
                        "digits, - and _")  # fmt: skip
    if not isinstance(entry, dict):
        raise UserError(f"tasks.{name}: give a mapping of the task's settings (name, options, ...)")
    unknown = sorted(set(entry) - TASK_FIELDS - ENTRY_FIELDS)
    if unknown:
        raise UserError(
            f"tasks.{name}.{unknown[0]}: a task sets its task fields ({', '.join(sorted(TASK_FIELDS))}) "
            f"and {', '.join(sorted(ENTRY_FIELDS))}; the model, the image size and the algorithm "
            "are the run's, one for every task in a batch"
        )
    number = (int, float)
    kinds = {  # key: (holds, what to give)
        "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "weight": (lambda v: isinstance(v, number) and not isinstance(v, bool) and v > 0, "a number > 0"),
        "init": (lambda v: isinstance(v, str) and v, "a seed picture (gray, noise, icon:..., a file)"),
        "stop_at_accuracy": (lambda v: v is None or isinstance(v, number) and 0 <= v <= 1, "a number in [0, 1]"),
    }  # fmt: skip
    for key, (holds, what) in kinds.items():
        if key in entry and not holds(entry[key]):
            raise UserError(f"tasks.{name}.{key}={entry[key]!r}: give {what}")


def task_config(cfg, name: str, entry: dict) -> DictConfig:
    """A task's own config: the run's, its `task` section from the entry, its steps, seed and
    seed image, its folder under `<run>/tasks/`."""
    own = copy.deepcopy(cfg)
    with open_dict(own):
        own.task = OmegaConf.merge(OmegaConf.structured(TaskConfig), {
            k: v for k, v in entry.items() if k in TASK_FIELDS})  # fmt: skip
        own.steps = int(entry.get("steps") or cfg.steps)
        own.seed = int(entry.get("seed", cfg.seed))
        own.image.init = entry.get("init") or cfg.image.init
        own.run_dir = str(Path(cfg.run_dir) / "tasks" / name)
        own.tasks, own.tasks_file = {}, None
    return own


@dataclass
class TaskRun:
    """One task of the run: its config, data, scorer, prompt order, outputs and state."""

    name: str
    cfg: DictConfig
    task: object
    scorer: object
    sampler: PromptSampler
    held_out: list
    prompt_for: object
    outputs: RunOutputs
    tracker: Tracker
    state: DriverState = field(default_factory=DriverState)
    weight: float = 1.0
    stop_at_accuracy: float | None = None
    ended: str | None = None  # why it left: "done", "reached accuracy", "removed", an error
    update: object = None  # its last ImageUpdate
    summary: dict | None = None  # its summary.json, once it finished

    @property
    def active(self) -> bool:
        return self.ended is None and self.state.step < self.cfg.steps

    def prompts(self) -> int:
        return max(1, round(self.cfg.algo.prompts_per_step * self.weight))


def check_multitask(cfg, algorithm) -> None:
    problems = [
        (cfg.method.name == "art", "a multi-task run trains images (method=art): LoRA tasks "
         "would need an adapter each on the engines"),
        (cfg.learner.num_replicas == 1, "a multi-task run has one learner: set "
         "learner.num_replicas=1"),
        (cfg.algo.max_staleness == 0, "a multi-task run samples synchronously: set "
         "algo.max_staleness=0"),
        (type(algorithm).__name__ == "PolicyGradient", f"algo.loss={cfg.algo.loss}: a multi-task "
         "run trains policy-gradient objectives (dapo, grpo, ...)"),
        (not cfg.cluster.single_gpu and not cfg.rollout.sleep_mode, "a multi-task run keeps its "
         "engines awake beside the learner: not with cluster=single_gpu or rollout.sleep_mode"),
    ]  # fmt: skip
    for ok, message in problems:
        if not ok:
            raise UserError(message)


def open_task_run(cfg, name: str, entry: dict, model_path: str, parent: Tracker) -> TaskRun:
    own = task_config(cfg, name, entry)
    task, examples, scorer = open_task(own.task, own.task.split)
    # the seed picture read here: a bad one is this task's one-line error, not the learner's
    seed_image(own.image.init, own.image.height, own.image.width, own.seed,
               task_icon(own.task.name), own.image.background)  # fmt: skip
    max_new = own.rollout.max_new_tokens or task.max_new_tokens
    if own.algo.overlong_buffer >= max_new:
        raise UserError(f"tasks.{name}: algo.overlong_buffer={own.algo.overlong_buffer} must be < "
                        f"its completion limit {max_new}")  # fmt: skip
    held_out = []
    if own.eval.every:
        examples, held_out = split_validation(examples, own.eval.val_size, own.seed)
    outputs = RunOutputs(Path(own.run_dir), with_image=True)
    with parent_run(parent):
        tracker = Tracker(own, Path(own.run_dir), name, params=run_params(own))
    outputs.mlflow = tracker
    return TaskRun(
        name, own, task, scorer, PromptSampler(examples, seed=own.seed), held_out,
        prompt_builder(own, model_path), outputs, tracker,
        weight=float(entry.get("weight", 1.0)), stop_at_accuracy=entry.get("stop_at_accuracy"),
    )  # fmt: skip


def is_multitask_run(cfg) -> bool:
    """A resume (`resume=auto`, `resume_from`) of a run folder that holds a multi-task run."""
    resuming = cfg.get("resume") == "auto" or bool(cfg.get("resume_from"))
    return resuming and (Path(cfg.run_dir) / ENTRIES).is_file()


def train_tasks(cfg, algorithm) -> dict:
    """The multi-task run end to end; returns the run's summary (every task's)."""
    check_multitask(cfg, algorithm)
    run_dir, start = Path(cfg.run_dir), time.perf_counter()
    entries = task_entries(cfg)
    if not entries and not is_multitask_run(cfg):
        raise UserError("tasks={} names no task: give tasks=<preset> or tasks_file=<yaml>")
    model_path = resolve_model_path(cfg.model.name)
    lock = RunLock(run_dir, cfg.lock_stale_s).acquire()
    try:
        return train_tasks_locked(cfg, algorithm, entries, run_dir, model_path, lock, start)
    finally:
        lock.release()


def resolve_shared(cfg, algorithm, tasks: dict[str, TaskRun]) -> None:
    """What every task shares, filled and checked once: the algorithm's defaults (one learner:
    one completion limit where the loss's aggregation needs it) and the image size."""
    limits = {t.cfg.rollout.max_new_tokens or t.task.max_new_tokens for t in tasks.values()}
    if len(limits) > 1 and cfg.algo.loss_scale_factor is None:
        with open_dict(cfg):  # seq-mean-token-sum-norm divides by a constant: one for the run
            cfg.algo.loss_scale_factor = max(limits)
    algorithm.resolve(cfg, max(limits))
    for t in tasks.values():
        with open_dict(t.cfg):
            t.cfg.algo = copy.deepcopy(cfg.algo)
    processor = next(iter(tasks.values())).prompt_for.processor
    validate_image_size(cfg.image.height, cfg.image.width,
                        VisionSpec.from_image_processor(processor.image_processor), cfg.model.name)  # fmt: skip


def train_tasks_locked(cfg, algorithm, entries, run_dir, model_path, lock, start) -> dict:
    resuming = cfg.resume == "auto" or bool(cfg.resume_from)
    ended: dict = {}
    if resuming and (run_dir / ENTRIES).is_file():  # the tasks it had, then any new ones
        entries = {**json.loads((run_dir / ENTRIES).read_text()), **entries}
        if (run_dir / MANIFEST).is_file():
            ended = {n: t["ended"] for n, t in json.loads((run_dir / MANIFEST).read_text()).items()
                     if t.get("ended") and t["ended"] != "done"}  # fmt: skip
    parent = Tracker(cfg, run_dir, run_dir.name, params=run_params(cfg))
    tasks: dict[str, TaskRun] = {}
    for name, entry in entries.items():
        tasks[name] = open_task_run(cfg, name, entry, model_path, parent)
    resolve_shared(cfg, algorithm, tasks)
    run_outputs = RunOutputs(run_dir, with_image=False)
    run_outputs.config(cfg)
    run_outputs.write(ENTRIES, strict_json(entries))
    ray, owns_ray, learner, workers = start_actors(cfg, model_path, run_id=run_dir.name)
    made: dict = {}

    def actors() -> list:
        return [learner, *(made["pool"].actors() if "pool" in made else workers)]

    with run_scope(ray, owns_ray, actors, parent):
        pool = made["pool"] = WorkerPool(ray, workers, max_attempts=cfg.rollout.max_restarts + 1)
        for t in tasks.values():
            join(ray, learner, pool, t, resume=resuming)
            t.ended = ended.get(t.name)
        control = Control(run_dir)
        step = 0
        while any(t.active for t in tasks.values()):
            lock.check()
            step += 1
            for name, entry in control.requests():  # art-tasks add / remove, between steps
                if apply_request(cfg, ray, learner, pool, tasks, name, entry, model_path, parent):
                    entries[name] = entry
                    run_outputs.write(ENTRIES, strict_json(entries))
            run_step(cfg, ray, learner, pool, [t for t in tasks.values() if t.active], step)
            write_manifest(run_dir, tasks)
        for t in tasks.values():
            finish(t, ray, learner)
        summary = {
            "tasks": {n: t.summary for n, t in tasks.items()},
            "wall_time_s": round(time.perf_counter() - start, 2),
            "steps": step,
            "model": cfg.model.name,
            "loss": cfg.algo.loss,
        }
        run_outputs.write("summary.json", strict_json(summary))
        write_manifest(run_dir, tasks)
        parent.flush()
    return summary


def join(ray, learner, pool: WorkerPool, t: TaskRun, resume: bool = False) -> None:
    """A task onto the shared learner and engines: its slot from its seed image (or, resuming,
    its last checkpoint), its image on every worker, its first files."""
    icon = task_icon(t.cfg.task.name)
    ray.get(learner.add_task.remote(t.name, t.cfg.image.init, t.cfg.seed, icon))
    last = t.outputs.checkpoints / "last.pt"
    if resume and last.is_file():
        size = t.cfg.image.height, t.cfg.image.width
        learner_state, t.state = load_checkpoint(last, t.cfg.model.name, *size)
        ray.get(learner.task_call.remote(t.name, "load_state_dict", learner_state))
        t.sampler.load_state_dict(t.state.sampler)
    t.update = ray.get(learner.task_call.remote(t.name, "image_update"))
    pool.broadcast_task(t.name, t.update)
    t.outputs.config(t.cfg)
    if t.state.step == 0:
        t.outputs.write("seed.png", t.update.png)
    t.outputs.write("art.png", t.update.png)  # served at once: art-serve --tasks <run>/tasks
    how = "resumed" if t.state.step else "joined"
    logger.info("task %s %s (%s, step %d of %d)", t.name, how, t.cfg.task.name, t.state.step,
                t.cfg.steps)  # fmt: skip


def run_step(cfg, ray, learner, pool: WorkerPool, active: list[TaskRun], step: int) -> None:
    """Sample (every task's round in one engine batch), score, update every task, broadcast,
    log, evaluate, checkpoint."""
    t0 = time.perf_counter()
    rounds = {
        t.name: RolloutRounds(t.cfg, t.scorer, t.sampler, t.prompt_for, t.state.step, len(pool),
                              image_key=t.name, prompts=t.prompts())
        for t in active
    }  # fmt: skip
    failed = sample_together(pool, rounds)
    for t in active:
        if t.name in failed:
            stop_task(t, f"stopped: {failed[t.name]}")
    batches = {n: r.result() for n, r in rounds.items() if n not in failed}
    t1 = time.perf_counter()
    updates = ray.get(
        learner.update_tasks.remote({n: b.kept for n, b in batches.items() if b.kept})
    )
    t2 = time.perf_counter()
    line = []
    for t in active:
        if t.name not in batches:
            continue
        rollouts = batches[t.name]
        learn_metrics, update = updates.get(t.name, ({}, t.update))
        if update.version != t.update.version:
            pool.broadcast_task(t.name, update)
        t.update = update
        t3 = time.perf_counter()
        metrics = compute_step_metrics(rollouts, learn_metrics, (t0, t1, t2, t3))
        t.state.step += 1
        t.state.record(metrics, HISTORY_KEYS)
        t.tracker.log_metrics(metrics, step=t.state.step)
        line.append(f"{t.name} {metrics['reward_mean']:.3f}")
        evaluate_task(pool, t)
        if t.state.step % t.cfg.logging.checkpoint_every == 0 or not t.active:
            checkpoint(ray, learner, t)
    logger.info("step %d: %s", step, ", ".join(line) or "no task sampled")


def sample_together(pool: WorkerPool, rounds: dict[str, RolloutRounds]) -> dict[str, str]:
    """Every task's rounds, one engine batch per round for all of them (tasks whose sampling
    differs beyond the seed, e.g. their completion limits, in one batch each); returns the
    tasks whose rewards failed (name -> why)."""
    failed: dict[str, str] = {}
    while True:
        pending = {n: r.next() for n, r in rounds.items() if n not in failed}
        pending = {n: p for n, p in pending.items() if p is not None}
        if not pending:
            return failed
        by_sampling: dict = {}
        for name, (requests, sampling) in pending.items():
            key = (sampling.temperature, sampling.max_new_tokens, sampling.top_p)
            by_sampling.setdefault(key, []).append((name, requests, sampling))
        for batch in by_sampling.values():
            requests = [r for _, reqs, _ in batch for r in reqs]
            groups = pool.generate(requests, batch[0][2])
            at = 0
            for name, reqs, _ in batch:
                try:
                    rounds[name].accept(groups[at : at + len(reqs)])
                except RewardFunctionError as err:  # this task alone stops; the others go on
                    failed[name] = str(err)
                at += len(reqs)


def evaluate_task(pool: WorkerPool, t: TaskRun) -> None:
    every = t.cfg.eval.every
    if not t.held_out or not every or (t.state.step % every and t.active):
        return
    metrics = evaluate_condition(pool, t.scorer, t.held_out, t.prompt_for, True,
                                 eval_sampling(t.cfg, t.task), image_key=t.name)  # fmt: skip
    t.tracker.log_metrics({"eval/accuracy": metrics["accuracy"]}, step=t.state.step)
    if metrics["accuracy"] > t.state.best_accuracy:
        t.state.best_accuracy, t.state.best_step = metrics["accuracy"], t.state.step
        t.outputs.write("best.png", t.update.png)
    if t.stop_at_accuracy is not None and metrics["accuracy"] >= t.stop_at_accuracy:
        stop_task(t, f"reached accuracy {metrics['accuracy']:.3f} (stop_at_accuracy)")


def checkpoint(ray, learner, t: TaskRun) -> None:
    t.state.sampler, t.state.rng = t.sampler.state_dict(), capture_rng()
    state = ray.get(learner.task_call.remote(t.name, "state_dict"))
    t.outputs.step_policy(t.state.step, t.update)  # images/step_*.png and art.png
    t.outputs.plots(t.state.history, f"{t.name} ({t.cfg.task.name})")
    save_checkpoint(t.outputs.checkpoints / "last.pt", state, t.state)


def stop_task(t: TaskRun, why: str) -> None:
    if t.ended is None:
        t.ended = why
        logger.warning("task %s left the run: %s", t.name, why)


def finish(t: TaskRun, ray, learner) -> None:
    """A task's end: art.png, its summary, its card."""
    if t.ended is None:
        t.ended = "done"
    t.outputs.policy(t.update)
    rewards = t.state.rewards
    t.summary = {
        "task": t.cfg.task.name, "steps": t.state.step, "ended": t.ended,
        "reward_first5": mean(rewards[:5]), "reward_last5": mean(rewards[-5:]), "rewards": rewards,
        "best_eval_accuracy": t.state.best_accuracy if t.state.best_step is not None else None,
        "best_step": t.state.best_step, "image_version": t.update.version,
        "artifact_path": str((t.outputs.run_dir / "art.png").resolve()),
        "image_path": str((t.outputs.run_dir / "art.png").resolve()),
        "artifact_bytes": len(t.update.png), "model": t.cfg.model.name, "loss": t.cfg.algo.loss,
        "wall_time_s": None,
    }  # fmt: skip
    t.outputs.write("summary.json", strict_json(t.summary))
    write_card(t.outputs.run_dir)
    t.tracker.flush()


def write_manifest(run_dir: Path, tasks: dict[str, TaskRun]) -> None:
    manifest = {
        n: {"task": t.cfg.task.name, "step": t.state.step, "steps": t.cfg.steps,
            "ended": t.ended, "reward_last": (t.state.rewards or [None])[-1],
            "folder": str(t.outputs.run_dir)}
        for n, t in tasks.items()
    }  # fmt: skip
    write_bytes_atomic(run_dir / MANIFEST, strict_json(manifest))


class Control:
    """`art-tasks add|remove` requests: lines appended to `<run>/tasks.control.jsonl`, read from
    where the last read stopped, at step boundaries."""

    def __init__(self, run_dir: Path):
        self.path, self.saved = run_dir / CONTROL, run_dir / (CONTROL + ".offset")
        # where the last driver of this run folder stopped reading (a resumed run takes the
        # requests made while it was down)
        self.offset = int(self.saved.read_text()) if self.saved.is_file() else 0

    def requests(self) -> list[tuple[str, dict | None]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for the next step
        self.offset += len(complete)
        if complete:
            write_bytes_atomic(self.saved, str(self.offset).encode())
        out = []
        for line in complete.decode().splitlines():
            try:
                request = json.loads(line)
                if request["op"] not in ("add", "remove") or (
                    request["op"] == "add" and not isinstance(request.get("entry"), dict)
                ):
                    raise ValueError(request)
                out.append(
                    (request["name"], request.get("entry") if request["op"] == "add" else None)
                )
            except (ValueError, KeyError, TypeError):
                logger.warning("tasks.control.jsonl: ignored a line that is no request: %r", line)
        return out


def apply_request(cfg, ray, learner, pool, tasks, name, entry, model_path, parent) -> bool:
    """One `art-tasks` request; True when it added a task. A bad request is refused alone (one
    warning line); the run goes on."""
    if entry is None:  # remove
        t = tasks.get(name)
        if t is None or not t.active:
            logger.warning("art-tasks remove %s: no such task training", name)
            return False
        stop_task(t, "removed (art-tasks remove)")
        checkpoint(ray, learner, t)
        pool.drop_task(name)
        return False
    if name in tasks:
        logger.warning("art-tasks add %s: the run has a task of that name already", name)
        return False
    try:
        check_entry(name, entry)
        t = open_task_run(cfg, name, entry, model_path, parent)
        t.cfg.algo = copy.deepcopy(cfg.algo)
        join(ray, learner, pool, t)
    except Exception as err:  # a bad task (its data, rewards, seed picture) is refused alone
        logger.warning("art-tasks add %s refused: %s", name, str(err).splitlines()[0][:300])
        ray.get(learner.drop_task.remote(name))
        return False
    tasks[name] = t
    return True
