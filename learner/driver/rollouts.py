"""The rollout side as the driver sees it: prompts, fan-out to the workers, scoring, dynamic
sampling, and the broadcast of a new image to every worker."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.errors import UserError
from shared.messages import (
    AdapterUpdate,
    ImageUpdate,
    RolloutRequest,
    SamplingConfig,
    ScoredGroup,
)
from shared.sampling import round_seed

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
        from learner.driver.checkpoint import _tuples

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
    from transformers import AutoProcessor

    from shared.prompts import render_prompt

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
    chunks: list[tuple[int, list[RolloutRequest], object]]  # (worker index, requests, future)


class WorkerPool:
    """The rollout workers as one: fan-out, broadcast, and recovery from a worker that died.

    Requests are split over the workers in contiguous chunks and the groups come back in
    request order. The pool remembers the current image and adapter (one `ray.put` each), so a
    worker that Ray restarted after its process died gets them before it samples again, and its
    chunk is sampled again with the same seeds: the step goes on as if nothing happened.
    """

    def __init__(self, ray, workers: list, max_attempts: int = 3, restart_timeout_s: float = 300):
        self.ray, self.workers = ray, workers
        self.max_attempts, self.restart_timeout_s = max_attempts, restart_timeout_s
        self.image: tuple | None = None  # (ImageUpdate, ObjectRef of the PNG)
        self.adapter: tuple | None = None  # (AdapterUpdate, ObjectRef of the weights)
        self.update = None  # the last policy broadcast (what the learner trains)
        self.restarts = 0
        self.sync_bytes = 0  # bytes of the last broadcast policy

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
        for i in range(len(self.workers)):
            self._call(i, lambda w, sent=sent: self._send(w, *sent))

    def clear_adapter(self) -> None:
        """Back to the base model on every worker (evaluating conditions one after another)."""
        self.adapter = None
        if isinstance(self.update, AdapterUpdate):
            self.update = None
        for i in range(len(self.workers)):
            self._call(i, lambda w: w.clear_adapter.remote())

    @staticmethod
    def _send(worker, update, ref):
        """A policy to one worker (an ObjectRef: fetched once per node)."""
        if isinstance(update, ImageUpdate):
            return worker.set_image.remote(update.version, ref)
        return worker.set_adapter.remote(update.version, update.config, ref)

    # ---- sampling ----------------------------------------------------------------------
    def launch(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> Pending:
        per = math.ceil(len(requests) / len(self.workers))
        chunks = []
        for i, worker in enumerate(self.workers):
            chunk = requests[i * per : (i + 1) * per]
            if chunk:
                chunks.append((i, chunk, worker.generate.remote(chunk, sampling)))
        return Pending(requests, sampling, chunks)

    def collect(self, pending: Pending) -> list[list]:
        groups = []
        for i, chunk, future in pending.chunks:
            try:
                groups.extend(self.ray.get(future))
            except self._worker_died_errors() as err:
                self._recover(i, err)
                groups.extend(
                    self._call(i, lambda w, c=chunk: w.generate.remote(c, pending.sampling))
                )
        return groups

    def generate(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> list[list]:
        return self.collect(self.launch(requests, sampling))

    def sleep(self) -> None:
        """Every worker's engine asleep (sleep mode: the learner updates on the same GPU)."""
        for i in range(len(self.workers)):
            self._call(i, lambda w: w.sleep.remote())

    def wake_up(self) -> None:
        for i in range(len(self.workers)):
            self._call(i, lambda w: w.wake_up.remote())

    def stats(self) -> list[dict]:
        return [self._call(i, lambda w: w.stats.remote()) for i in range(len(self.workers))]

    # ---- recovery ----------------------------------------------------------------------
    def _worker_died_errors(self):
        from ray.exceptions import ActorUnavailableError, RayActorError

        return (RayActorError, ActorUnavailableError)

    def _call(self, i: int, fn):
        """`ray.get(fn(worker))`, recovering worker i (restart + current image) if it died."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.ray.get(fn(self.workers[i]))
            except self._worker_died_errors() as err:
                if attempt == self.max_attempts:
                    raise
                self._recover(i, err)
        raise AssertionError("unreachable")

    def _recover(self, i: int, err: BaseException) -> None:
        """Wait until Ray restarted worker i, then give it the current image."""
        import time

        self.restarts += 1
        logger.warning(
            "rollout-worker-%d died (%s); waiting for its restart (%d restarts in this run)",
            i,
            type(err).__name__,
            self.restarts,
        )
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            try:
                self.ray.get(self.workers[i].__ray_ready__.remote(), timeout=30)
                break
            except self._worker_died_errors() + (self.ray.exceptions.GetTimeoutError,):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"rollout-worker-{i} did not come back within {self.restart_timeout_s:g}s "
                        "after its process died (rollout.max_restarts may be spent)"
                    ) from err
                time.sleep(1)
        for sent in (self.image, self.adapter):  # the image, then the adapter, as they are
            if sent is not None:
                self.ray.get(self._send(self.workers[i], *sent))
        logger.warning(
            "rollout-worker-%d is back with policy version %s",
            i,
            self.update and self.update.version,
        )


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
    reward_errors: int = 0


class RewardFunctionError(UserError):
    """The task's score or reward failed on too many completions of a step."""


def score_groups(task, examples, requests, groups, max_new: int, overlong_buffer: int):
    """Task reward plus DAPO's overlong shaping, and the strict accuracy, per completion.

    A score or reward that raises (or is not a finite number) gives that completion reward 0
    and accuracy 0; the error is logged with the example id. Returns (groups, errors)."""
    from learner.dapo import overlong_penalty

    scored, errors = [], 0
    for ex, req, comps in zip(examples, requests, groups, strict=True):
        acc, rew = [], []
        for c in comps:
            try:
                a, r = float(task.score(ex, c.text)), float(task.reward(ex, c.text))
                if not (math.isfinite(a) and math.isfinite(r)):
                    raise ValueError(f"score {a}, reward {r} is not a finite number")
            except Exception as err:  # a bug in a task's scoring must not end the run at once
                errors += 1
                logger.warning("task %s failed to score example %s: %r", task.name, ex.uid, err)
                a, r = 0.0, 0.0
            acc.append(a)
            rew.append(r + overlong_penalty(len(c.token_ids), max_new, overlong_buffer))
        scored.append(ScoredGroup(req.prompt, tuple(comps), tuple(rew), tuple(acc)))
    return scored, errors


# More failed scorings than this fraction of a step's completions stops the run.
MAX_REWARD_ERROR_FRAC = 0.10


def compute_rollouts(cfg, pool: WorkerPool, task, sampler, prompt_for, step: int) -> StepRollouts:
    """Sample, score and filter (dynamic sampling) until the batch is full or the extra
    rounds are spent."""
    from learner.dapo import keep_informative_groups

    algo = cfg.algo
    max_new = cfg.rollout.max_new_tokens or task.max_new_tokens
    out = StepRollouts(step=step)
    while len(out.kept) < algo.prompts_per_step and out.rounds <= algo.max_extra_rounds:
        sampling = SamplingConfig(
            temperature=algo.temperature,
            max_new_tokens=max_new,
            top_p=cfg.rollout.top_p,
            seed=round_seed(cfg.seed, step, out.rounds),
        )
        examples = sampler.take(algo.prompts_per_step)
        requests = rollout_requests(examples, prompt_for, algo.group_size, uses_image(cfg))
        groups = pool.generate(requests, sampling)
        scored, errors = score_groups(
            task, examples, requests, groups, max_new, algo.overlong_buffer
        )
        out.reward_errors += errors
        out.completions += sum(len(g) for g in groups)
        if out.reward_errors > MAX_REWARD_ERROR_FRAC * out.completions:
            raise RewardFunctionError(
                f"task {task.name} failed to score {out.reward_errors} of {out.completions} "
                f"completions in step {step + 1} (more than {MAX_REWARD_ERROR_FRAC:.0%}); the "
                "log names the examples and errors; fix the task's score/reward"
            )
        out.lengths.extend(len(c.token_ids) for g in scored for c in g.completions)
        if out.rounds == 0:  # the unbiased estimate of the current policy's reward
            out.first_round_rewards = [r for g in scored for r in g.rewards]
            out.first_round_accuracies = [a for g in scored for a in g.accuracies]
        keep = keep_informative_groups(
            [g.accuracies for g in scored],
            [g.rewards for g in scored],
            algo.filter_metric,
            algo.min_reward_std,
        )
        out.kept.extend(scored[i] for i in keep)
        out.groups_seen += len(scored)
        out.rounds += 1
    out.kept = out.kept[: algo.prompts_per_step]
    return out


class Prefetch:
    """The next step's rollouts, computed in a thread while the learner updates (overlap).

    Only this thread uses the workers until `result()` joins it, and the driver broadcasts the
    new image only after that, so every completion of the prefetched step is sampled with the
    same image, exactly one version behind the learner: deterministic, and resumable.
    """

    def __init__(self, fn):
        import threading

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
    from dataclasses import asdict

    return asdict(rollouts)


def rollouts_from_state(state: dict) -> StepRollouts:
    from shared.messages import Completion

    def group(g: dict) -> ScoredGroup:
        completions = tuple(
            Completion(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
            for c in g["completions"]
        )
        return ScoredGroup(g["prompt"], completions, tuple(g["rewards"]), tuple(g["accuracies"]))

    return StepRollouts(**{**state, "kept": [group(g) for g in state["kept"]]})
