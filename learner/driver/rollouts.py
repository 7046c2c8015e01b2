"""The rollout side as the driver sees it: prompts, fan-out to the workers, scoring, dynamic
sampling, and the broadcast of a new image to every worker."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from learner.dapo import keep_informative_groups, overlong_penalty
from learner.driver.actors import stop_worker
from learner.driver.checkpoint import _tuples
from shared.errors import RunStoppedError, UserError
from shared.messages import (
    AdapterUpdate,
    Completion,
    ImageUpdate,
    RolloutRequest,
    SamplingConfig,
    ScoredGroup,
)
from shared.prompts import render_prompt
from shared.sampling import round_seed
from shared.tasks.scoring import as_scorer

logger = logging.getLogger("art.rollouts")


class PromptSampler:
    """Cycles through the task's examples in a seeded order, reshuffling each epoch."""

    def __init__(self, examples: Sequence, seed: int):
        if not examples:
            raise UserError("the task has no training examples in this split; check task.split")
        self.examples, self.rng, self.order = list(examples), random.Random(seed), []

    def state_dict(self) -> dict:
        return {"size": len(self.examples), "order": list(self.order), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.examples):
            raise UserError(
                f"the checkpoint's prompt order covers {state['size']} training examples, the "
                f"task now gives {len(self.examples)}; resume with the run's own task settings"
            )

        self.order, self.rng = list(state["order"]), random.Random()
        self.rng.setstate(_tuples(state["rng"]))

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order.pop()])
        return out


def split_validation(examples: Sequence, val_size: int, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded slice of the training split held out of the training
    prompts, for the periodic evaluation that picks `best.png` (never the test split)."""
    if val_size >= len(examples):
        raise UserError(
            f"eval.val_size={val_size} leaves no training examples (the split has "
            f"{len(examples)}); lower eval.val_size or set eval.every=0"
        )
    order = list(range(len(examples)))
    random.Random(f"validation-{seed}").shuffle(order)
    held = set(order[:val_size])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


def prompt_builder(cfg, model_path: str):
    """`prompt_for(example, with_image=True) -> str`: the one prompt rendering used by
    training, periodic evaluation and art-eval (image first, then the task's question)."""
    # start-up time: a heavy library, loaded when this runs
    from transformers import AutoProcessor

    templater = AutoProcessor.from_pretrained(model_path)

    def prompt_for(example, with_image: bool = True) -> str:
        return render_prompt(
            templater,
            example.question,
            cfg.task.system_prompt,
            cfg.task.enable_thinking,
            with_image=with_image,
        )

    prompt_for.processor = templater
    return prompt_for


def uses_image(cfg) -> bool:
    """ART prompts hold the image; the LoRA baseline's only with `method.with_image`."""
    return cfg.method.name == "art" or cfg.method.with_image


def rollout_requests(examples, prompt_for, group_size: int, with_image: bool = True):
    return [
        RolloutRequest(
            request_id=i, prompt=prompt_for(ex, with_image), n=group_size, with_image=with_image
        )
        for i, ex in enumerate(examples)
    ]


@dataclass
class Pending:
    """Requests handed to the workers whose completions have not been collected yet."""

    requests: list[RolloutRequest]
    sampling: SamplingConfig
    chunks: list[tuple[object, list[RolloutRequest], object]]  # (worker, requests, future)


class WorkerGone(RuntimeError):
    """A worker's actor is dead for good: removed, its restarts spent, or its node gone."""


class WorkerPool:
    """The rollout workers as one: fan-out, broadcast, recovery, and a worker count that may
    change between steps (`resize`, `admit`: elastic workers, learner/driver/scale.py).

    Requests are split over the workers in contiguous chunks and the groups come back in
    request order. Every request carries its own seed (shared/sampling.py), so which worker
    serves it, and how many there are, does not change what it samples. The pool remembers
    the current image and adapter (one `ray.put` each): a worker that Ray restarted after its
    process died, or one that joins later, gets them before it samples. A dead worker's chunk
    is sampled again with the same seeds: by the same worker once Ray restarted it, or, when
    it is gone for good, by the workers left. The step goes on as if nothing happened.
    """

    def __init__(
        self,
        ray,
        workers: list,
        max_attempts: int = 3,
        restart_timeout_s: float = 300,
        factory=None,
        started: int | None = None,
    ):
        """`factory(index) -> actor` starts one more worker (elastic runs); `started`: how
        many of `workers` are known to be up (the others join once their process is)."""
        self.ray, self.factory = ray, factory
        self.max_attempts, self.restart_timeout_s = max_attempts, restart_timeout_s
        self.workers: list = []  # serving, in the order chunks are handed out
        self.names: dict = {}  # actor -> "rollout-worker-<index>"
        self.pending: list[tuple[object, object]] = []  # (actor, ready ref): still starting
        self.next_index = len(workers)
        self.image: tuple | None = None  # (ImageUpdate, ObjectRef of the PNG)
        self.task_images: dict[str, tuple] = {}  # a multi-task run: task -> (update, ref)
        self.adapter: tuple | None = None  # (AdapterUpdate, ObjectRef of the weights)
        self.update = None  # the last policy broadcast (what the learner trains)
        self.restarts = 0  # worker processes Ray restarted
        self.lost = 0  # workers gone for good (their chunks sampled by the others)
        self.sync_bytes = 0  # bytes of the last broadcast policy
        for i, worker in enumerate(workers):
            self.names[worker] = f"rollout-worker-{i}"
        if started is None or started >= len(workers):
            self.workers = list(workers)
        else:
            refs = {w.__ray_ready__.remote(): w for w in workers}
            ray.wait(list(refs), num_returns=started, timeout=restart_timeout_s)  # those are up
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=1.0)
            self.workers = [refs[r] for r in refs if r in ready]
            self.pending = [(refs[r], r) for r in refs if r not in ready]

    def name(self, worker) -> str:
        return self.names.get(worker, "rollout-worker-?")

    def actors(self) -> list:
        """Every actor the pool holds (serving and starting): what a run kills at its end."""
        return self.workers + [actor for actor, _ in self.pending]

    # ---- broadcast ---------------------------------------------------------------------
    def broadcast(self, update) -> None:
        """One copy of the policy (the PNG, or the LoRA adapter's weights) into the object
        store; every worker swaps to it."""
        payload = update.png if isinstance(update, ImageUpdate) else update.weights
        sent = (update, self.ray.put(payload))
        if isinstance(update, ImageUpdate):
            self.image = sent
        else:
            self.adapter = sent
        self.update, self.sync_bytes = update, len(payload)
        self._each(lambda w, sent=sent: self._send(w, *sent))

    def broadcast_task(self, key: str, update: ImageUpdate) -> None:
        """A task's image of a multi-task run (requests name it by `key`): one copy into the
        object store, every worker keeps it beside the other tasks'."""
        sent = (update, self.ray.put(update.png))
        self.task_images[key] = sent
        self.sync_bytes = len(update.png)
        self._each(lambda w, sent=sent: w.set_image.remote(sent[0].version, sent[1], key))

    def drop_task(self, key: str) -> None:
        """A task that left the run: the workers forget its image."""
        if self.task_images.pop(key, None) is not None:
            self._each(lambda w: w.drop_image.remote(key))

    def clear_adapter(self) -> None:
        """Back to the base model on every worker (evaluating conditions one after another)."""
        self.adapter = None
        if isinstance(self.update, AdapterUpdate):
            self.update = None
        self._each(lambda w: w.clear_adapter.remote())

    @staticmethod
    def _send(worker, update, ref):
        """A policy to one worker (an ObjectRef: fetched once per node)."""
        if isinstance(update, ImageUpdate):
            return worker.set_image.remote(update.version, ref)
        return worker.set_adapter.remote(update.version, update.config, ref)

    def _bring_up_to_date(self, worker) -> None:
        for sent in (self.image, self.adapter):  # the image, then the adapter, as they are
            if sent is not None:
                self.ray.get(self._send(worker, *sent))
        for key, (update, ref) in self.task_images.items():  # every task's, of a multi-task run
            self.ray.get(worker.set_image.remote(update.version, ref, key))

    # ---- sampling ----------------------------------------------------------------------
    def launch(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> Pending:
        if not self.workers:
            self._wait_for_a_worker()
        per = math.ceil(len(requests) / len(self.workers))
        chunks = []
        for i, worker in enumerate(self.workers):
            chunk = requests[i * per : (i + 1) * per]
            if chunk:
                chunks.append((worker, chunk, worker.generate.remote(chunk, sampling)))
        return Pending(requests, sampling, chunks)

    def collect(self, pending: Pending) -> list[list]:
        groups = []
        for worker, chunk, future in pending.chunks:
            try:
                groups.extend(self.ray.get(future))
            except self._worker_died_errors() as err:
                groups.extend(self._sample_again(worker, chunk, pending.sampling, err))
        return groups

    def _sample_again(self, worker, chunk, sampling, err) -> list[list]:
        """A dead worker's chunk: the same worker once restarted, else the workers left."""
        try:
            self._recover(worker, err)
            return self._call(worker, lambda w: w.generate.remote(chunk, sampling))
        except WorkerGone as gone:
            self._drop(worker, gone)
            return self.generate(chunk, sampling)  # same requests, same seeds, same groups

    def generate(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> list[list]:
        return self.collect(self.launch(requests, sampling))

    def sleep(self) -> None:
        """Every worker's engine asleep (sleep mode: the learner updates on the same GPU)."""
        self._each(lambda w: w.sleep.remote())

    def wake_up(self) -> None:
        self._each(lambda w: w.wake_up.remote())

    def stats(self) -> list[dict]:
        return self._each(lambda w: w.stats.remote())

    # ---- the worker count (at step boundaries only: no chunk is out then) ---------------
    def resize(self, count: int) -> None:
        """Start workers up to `count` (serving + starting) or stop the newest beyond it.
        New workers serve once their process is up (`admit`)."""
        if count < 1:
            raise ValueError(f"a pool needs at least one worker, asked for {count}")
        while len(self.workers) + len(self.pending) < count:
            if self.factory is None:
                raise RuntimeError("this pool cannot start workers (no factory)")
            index, self.next_index = self.next_index, self.next_index + 1
            actor = self.factory(index)
            self.names[actor] = f"rollout-worker-{index}"
            self.pending.append((actor, actor.__ray_ready__.remote()))
            logger.info("rollout-worker-%d starting (%d asked for)", index, count)
        while len(self.workers) + len(self.pending) > count:
            actor = self.pending.pop()[0] if self.pending else self.workers.pop()
            self._stop(actor)
            logger.info("%s stopped (%d asked for)", self.name(actor), count)

    def admit(self) -> list[str]:
        """Workers whose process is up join: the current image (and adapter) first. Returns
        their names."""
        if not self.pending:
            return []
        refs = [ref for _, ref in self.pending]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        joined = []
        for actor, ref in list(self.pending):
            if ref not in ready:
                continue
            self.pending.remove((actor, ref))
            try:
                self.ray.get(ref)  # a constructor that failed raises here
                self._bring_up_to_date(actor)
            except self._worker_died_errors() as err:
                logger.warning("%s did not start: %s", self.name(actor), err)
                self._stop(actor)
                continue
            self.workers.append(actor)
            joined.append(self.name(actor))
            logger.info("%s joined with policy version %s", self.name(actor), self._version())
        return joined

    def _wait_for_a_worker(self) -> None:
        """No worker serves: wait for one that is starting (or fail)."""

        deadline = time.monotonic() + self.restart_timeout_s
        while not self.workers:
            if not self.pending:
                raise RuntimeError(
                    f"no rollout worker is left ({self.lost} gone for good, {self.restarts} "
                    "restarts); the cluster lost their nodes or rollout.max_restarts is spent"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no rollout worker serves and none of the {len(self.pending)} starting "
                    f"came up within {self.restart_timeout_s:g}s"
                )
            self.ray.wait([ref for _, ref in self.pending], num_returns=1, timeout=5)
            self.admit()

    def _stop(self, actor) -> None:
        """Kill for good, and free a tensor-parallel worker's placement group."""
        stop_worker(self.ray, actor)

    def _drop(self, worker, err: BaseException) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self._stop(worker)  # a restart that comes after all would hold resources unused
        self.lost += 1
        logger.warning(
            "%s is gone for good (%s); %d workers serve on", self.name(worker), err, len(self)
        )

    def __len__(self) -> int:
        return len(self.workers)

    def _version(self):
        return self.update and self.update.version

    # ---- recovery ----------------------------------------------------------------------
    def _worker_died_errors(self):
        # start-up time: a heavy library, loaded when this runs
        from ray.exceptions import ActorUnavailableError, RayActorError

        return (RayActorError, ActorUnavailableError)

    def _each(self, fn) -> list:
        """`_call` on every worker; one gone for good leaves the pool (its results too)."""
        results = []
        for worker in list(self.workers):
            try:
                results.append(self._call(worker, fn))
            except WorkerGone as gone:
                self._drop(worker, gone)
        if not self.workers and not self.pending:
            self._wait_for_a_worker()  # raises: nobody left
        return results

    def _call(self, worker, fn):
        """`ray.get(fn(worker))`, recovering the worker (restart + current image) if it died;
        `WorkerGone` when it is dead for good."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.ray.get(fn(worker))
            except self._worker_died_errors() as err:
                if attempt == self.max_attempts:
                    raise WorkerGone(f"{self.name(worker)} failed {attempt} times") from err
                self._recover(worker, err)
        raise AssertionError("unreachable")

    def _dead_for_good(self, worker) -> bool:
        """Ray's own record of the actor (GCS): DEAD means no restart will come."""
        try:
            # optional dependency: its absence is handled below
            from ray._private import state

            return state.actors(worker._actor_id.hex()).get("State") == "DEAD"
        except Exception:  # an older or newer Ray without this table: wait for the deadline
            return False

    def _recover(self, worker, err: BaseException) -> None:
        """Wait until Ray restarted the worker, then give it the current image; `WorkerGone`
        when it is dead for good."""

        name = self.name(worker)
        if self._dead_for_good(worker):
            raise WorkerGone(f"{name}: {type(err).__name__}, no restart left") from err
        self.restarts += 1
        logger.warning(
            "%s died (%s); waiting for its restart (%d restarts in this run)",
            name,
            type(err).__name__,
            self.restarts,
        )
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            try:
                self.ray.get(worker.__ray_ready__.remote(), timeout=30)
                break
            except self._worker_died_errors() + (self.ray.exceptions.GetTimeoutError,):
                if self._dead_for_good(worker):
                    raise WorkerGone(f"{name}: not restarted (rollout.max_restarts spent)") from err
                if time.monotonic() > deadline:
                    raise WorkerGone(
                        f"{name} did not come back within {self.restart_timeout_s:g}s after its "
                        "process died"
                    ) from err
                time.sleep(1)
        self._bring_up_to_date(worker)
        logger.warning("%s is back with policy version %s", name, self._version())


@dataclass
class StepRollouts:
    """What the sample/score/filter phases produce for one step."""

    step: int = 0  # 0-based
    kept: list[ScoredGroup] = field(default_factory=list)
    first_round_rewards: list[float] = field(default_factory=list)
    first_round_accuracies: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    groups_seen: int = 0
    rounds: int = 0
    completions: int = 0
    reward_errors: int = 0  # completions on which a reward (or the strict score) failed
    num_workers: int = 0  # workers serving when the step's sampling began
    # Each reward function's values in the first round (without the ones it skipped or
    # failed on), verl's extra dict keys ("<name>/<key>"), and its failures in every round.
    reward_fn_values: dict[str, list[float]] = field(default_factory=dict)
    reward_fn_failures: dict[str, int] = field(default_factory=dict)
    score_s: float = 0.0  # time spent scoring
    extra: dict = field(default_factory=dict)  # the objective's own step figures (distill)

    def reward_metrics(self) -> dict[str, float]:
        """`rewards/<name>/mean`, `/std` (first round) and `/failures` (the step) per reward
        function, as TRL logs them."""
        out = {}
        for name, values in self.reward_fn_values.items():
            out[f"rewards/{name}/mean"] = _mean(values)
            if "/" not in name:  # a function's own values, not one of verl's extra keys
                out[f"rewards/{name}/std"] = _std(values)
                out[f"rewards/{name}/failures"] = float(self.reward_fn_failures.get(name, 0))
        return out


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs) -> float:
    mu = _mean(xs)
    return (sum((x - mu) ** 2 for x in xs) / len(xs)) ** 0.5 if xs else float("nan")


class RewardFunctionError(RunStoppedError):
    """The task's score or reward failed on too many completions of a step: the run stops
    (status 1, `stopped:`) with what it has saved."""

    needs_hint = True  # the driver adds what is kept and how to resume


def score_groups(
    scorer, examples, requests, groups, max_new: int, overlong_buffer: int, step: int = 0
):
    """Rewards (the task's, or the reward functions' weighted sum) plus DAPO's overlong
    shaping, and the strict accuracy, per completion (`shared/tasks/scoring.py`).

    A reward that fails on a completion (raises, times out, is no finite number in its range)
    gives that completion its fallback and accuracy 0; the failure is logged with the example
    id. Returns (groups, Scores)."""

    scorer = as_scorer(scorer)
    flat = [(ex, c) for ex, comps in zip(examples, groups, strict=True) for c in comps]
    scores = scorer.score(
        [ex for ex, _ in flat],
        [c.text for _, c in flat],
        [c.token_ids for _, c in flat],
        step=step,
        group_size=max((len(g) for g in groups), default=1),
    )
    scored, at = [], 0
    for req, comps in zip(requests, groups, strict=True):
        rew = [
            scores.rewards[at + j] + overlong_penalty(len(c.token_ids), max_new, overlong_buffer)
            for j, c in enumerate(comps)
        ]
        acc = scores.accuracies[at : at + len(comps)]
        scored.append(ScoredGroup(req.prompt, tuple(comps), tuple(rew), tuple(acc)))
        at += len(comps)
    return scored, scores


# More failed scorings than this fraction of a step's completions stops the run.
MAX_REWARD_ERROR_FRAC = 0.10


class RolloutRounds:
    """One step's sample/score/filter rounds of one task, as steps a caller drives: `next()`
    gives the next round's requests and sampling (None once the batch is full or the extra
    rounds are spent), `accept(groups)` scores and filters what the engines sampled for them.
    `compute_rollouts` runs one task's rounds alone; a multi-task run sends every task's round
    to the engines in one batch (learner/driver/multitask.py). Each request carries the task's
    image key and the round's seed, so a task samples the same in a batch as alone.
    `task`: the run's Scorer (or a plain task, scored by its own methods)."""

    def __init__(self, cfg, task, sampler, prompt_for, step: int, num_workers: int = 0,
                 image_key: str = "", prompts: int | None = None):  # fmt: skip
        self.cfg, self.scorer, self.sampler, self.prompt_for = (
            cfg,
            as_scorer(task),
            sampler,
            prompt_for,
        )
        self.step, self.image_key = step, image_key
        self.prompts = prompts or cfg.algo.prompts_per_step  # groups this step wants
        self.max_new = cfg.rollout.max_new_tokens or self.scorer.task.max_new_tokens
        self.out = StepRollouts(step=step, num_workers=num_workers)
        self.examples: list = []
        self.requests: list[RolloutRequest] = []

    def next(self) -> tuple[list[RolloutRequest], SamplingConfig] | None:
        algo, out = self.cfg.algo, self.out
        if len(out.kept) >= self.prompts or out.rounds > algo.max_extra_rounds:
            return None
        seed = round_seed(self.cfg.seed, self.step, out.rounds)
        sampling = SamplingConfig(
            temperature=algo.temperature,
            max_new_tokens=self.max_new,
            top_p=self.cfg.rollout.top_p,
            seed=seed,
        )
        self.examples = self.sampler.take(self.prompts)
        self.requests = rollout_requests(
            self.examples, self.prompt_for, algo.group_size, uses_image(self.cfg)
        )
        if self.image_key:  # in a batch of several tasks: its own image and seeds
            self.requests = [replace(r, image_key=self.image_key, seed=seed) for r in self.requests]
        return self.requests, sampling

    def accept(self, groups) -> None:
        algo, out, step = self.cfg.algo, self.out, self.step
        start = time.perf_counter()
        scored, scores = score_groups(
            self.scorer, self.examples, self.requests, groups, self.max_new,
            algo.overlong_buffer, step,
        )  # fmt: skip
        out.score_s += time.perf_counter() - start
        out.reward_errors += sum(scores.failed)
        for name, count in scores.failures.items():
            out.reward_fn_failures[name] = out.reward_fn_failures.get(name, 0) + count
        out.completions += sum(len(g) for g in groups)
        if out.reward_errors > MAX_REWARD_ERROR_FRAC * out.completions:
            failing = ", ".join(f"{n} {k}" for n, k in sorted(out.reward_fn_failures.items()))
            raise RewardFunctionError(
                f"rewards failed on {out.reward_errors} of {out.completions} completions in "
                f"step {step + 1} (more than {MAX_REWARD_ERROR_FRAC:.0%}; failures: {failing}); "
                "the log names the examples and errors: fix the reward (or the task's "
                "score/reward), its range (task.reward_range) or task.reward_timeout_s"
            )
        out.lengths.extend(len(c.token_ids) for g in scored for c in g.completions)
        if out.rounds == 0:  # the unbiased estimate of the current policy's reward
            out.first_round_rewards = [r for g in scored for r in g.rewards]
            out.first_round_accuracies = [a for g in scored for a in g.accuracies]
            out.reward_fn_values = {
                name: [v for v in values if v is not None] for name, values in scores.values.items()
            }
            out.reward_fn_values.update(scores.extras)
        keep = keep_informative_groups(
            [g.accuracies for g in scored],
            [g.rewards for g in scored],
            algo.filter_metric,
            algo.min_reward_std,
        )
        out.kept.extend(scored[i] for i in keep)
        out.groups_seen += len(scored)
        out.rounds += 1

    def result(self) -> StepRollouts:
        self.out.kept = self.out.kept[: self.prompts]
        return self.out


def compute_rollouts(cfg, pool: WorkerPool, task, sampler, prompt_for, step: int) -> StepRollouts:
    """Sample, score and filter (dynamic sampling) until the batch is full or the extra
    rounds are spent. `task`: the run's Scorer (or a plain task, scored by its own methods)."""
    rounds = RolloutRounds(cfg, task, sampler, prompt_for, step, len(pool))
    while (round_ := rounds.next()) is not None:
        rounds.accept(pool.generate(*round_))
    return rounds.result()


class Prefetch:
    """The next step's rollouts, computed in a thread while the learner updates (overlap).

    Only this thread uses the workers until `result()` joins it, and the driver broadcasts the
    new image only after that, so every completion of the prefetched step is sampled with the
    same image, exactly one version behind the learner: deterministic, and resumable.
    """

    def __init__(self, fn):

        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.value = fn()
        except BaseException as err:  # re-raised in the driver's thread
            self.error = err

    def result(self) -> StepRollouts:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def rollouts_to_state(rollouts: StepRollouts) -> dict:
    """A step's rollouts as plain data (a checkpoint taken while one is prefetched)."""

    return asdict(rollouts)


def rollouts_from_state(state: dict) -> StepRollouts:

    def group(g: dict) -> ScoredGroup:
        completions = tuple(
            Completion(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
            for c in g["completions"]
        )
        return ScoredGroup(g["prompt"], completions, tuple(g["rewards"]), tuple(g["accuracies"]))

    return StepRollouts(**{**state, "kept": [group(g) for g in state["kept"]]})
