"""The learner: a frozen model copy, what is trained (`learner/trained.py`), Adam, and the
update: a policy-gradient loss on scored groups (`algo.loss`, DAPO by default:
`learner/objectives/`), or, for sft and distill, an update on target sequences
(`learner/supervised.py`).

Used directly in tests and wrapped as a Ray actor (`name="learner"`) by the driver.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from learner.batches import Batch, mean_finite, to_cpu
from learner.data_parallel import DataParallel, parameter_hash
from learner.linear_attention import report_kernel_paths
from learner.metrics import ray_metrics
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor
from learner.policy_gradient_update import PolicyGradient, PolicyGradientSteps
from learner.preprocess import validate_image_size
from learner.settings import LearnerSettings
from learner.supervised import TARGET_OBJECTIVES
from learner.task_slots import TaskSlots
from learner.trained import make_trained
from shared.artifact import art_metadata
from shared.images import seed_image
from shared.messages import ImageUpdate

__all__ = ["Batch", "Learner", "LearnerSettings", "init_pixels", "mean_finite", "to_cpu"]

logger = logging.getLogger(__name__)


def init_pixels(
    init: str,
    height: int,
    width: int,
    seed: int = 0,
    task_icon: str = "math",
    background: str = "white",
) -> PixelImage:
    """The pixel parameter at its seed picture (`shared.images.seed_image`)."""
    return PixelImage.from_uint8(seed_image(init, height, width, seed, task_icon, background))


def make_objective(settings: LearnerSettings):
    """The learner's side of `algo.loss`: an objective on target sequences by its registered
    name (`learner/supervised.py`), else a policy-gradient loss (`learner/objectives/`, a
    registered name or an import path)."""
    return TARGET_OBJECTIVES.get(settings.loss, PolicyGradient)(settings)


class Learner(PolicyGradientSteps, TaskSlots):
    """The learner process: the frozen model, what is trained (`learner/trained.py`: ART's
    pixels or the LoRA baseline's adapter) and its optimizer.

    Each `update` does the least work that gives the DAPO gradient:
    1. old log-probs are those of the policy each completion was sampled with; where that is
       the current one and the completion is in the first minibatch, the first minibatch's
       own forward (before any optimizer step) doubles as its old log-probs; every other
       sequence gets one no-gradient pass per policy version (none at all with one minibatch
       and fresh completions: the ratio is exactly 1 there);
    2. one vision encode per minibatch (`Trained.gradient_pass`);
    3. logits at completion positions only (`FrozenPolicy`); every weight frozen;
    4. each distinct prompt of a pass computed once for all of its completions (the
       shared-prefix forward, `learner/shared_prefix.py`; `shared_prefix=False`: padded).
    The parameters of the last `max_staleness` versions are kept to score stale completions.

    Data parallel (`world_size` N > 1, after `init_group`; `learner/data_parallel.py`): each
    replica computes its share of every minibatch, and the gradient, the loss statistics and
    the old log-probs are all-reduced, so that every replica takes the same step.
    """

    def __init__(self, settings: LearnerSettings):
        s = self.settings = settings
        torch.manual_seed(s.seed)  # the same seed on every replica: the same minibatch split
        # the minibatch split's own generator: the same draws on every replica, whatever else
        # uses torch's default one (LoRA dropout draws per sequence of a replica's share)
        self.split_rng = torch.Generator().manual_seed(s.seed)
        self.metrics = ray_metrics(run=s.run_id, replica=str(s.rank))
        self.model_name = s.model_name
        self.model, self.processor = load_model_and_processor(
            s.model_path, dtype=s.dtype, device=s.device
        )
        self.policy = FrozenPolicy(
            self.model,
            self.processor,
            s.temperature,
            s.activation_checkpointing,
            shared_prefix=s.shared_prefix,
        )
        # which kernels run the linear attention (logged; on cuda a metric: the torch reference?)
        self.kernel_metrics = report_kernel_paths(self.model, self.policy.device)
        # data-parallel replicas (`init_group`): rank r of world_size
        self.data_parallel = DataParallel(s.rank, s.world_size, self.on_cuda)
        validate_image_size(s.height, s.width, self.policy.spec, s.model_name)
        image = init_pixels(s.init, s.height, s.width, s.seed, s.task_icon, s.background)
        self.trained = make_trained(
            s.method, self.model, image.to(s.device), s.model_name, s.lora, s.with_image
        )
        self.optimizer = torch.optim.Adam(self.trained.parameters(), lr=s.lr)
        # the objective's learner side: a policy loss on scored groups, or an objective on
        # target sequences (sft, distill, opd), found by name (`algo.loss`)
        self.objective = make_objective(s)
        self.objective.setup(self)
        self.num_minibatches = s.num_minibatches
        self.micro_batch_size = s.micro_batch_size
        self.max_tokens_per_micro_batch = s.max_tokens_per_micro_batch
        self.max_staleness = s.max_staleness
        self.version = 0
        self.consecutive_skips = 0  # optimizer steps refused in a row (non-finite)
        self.history: dict[int, list[torch.Tensor]] = {}  # earlier versions' parameters

    def __repr__(self) -> str:
        """The Ray dashboard's Repr column (taken once, when the actor starts: the version is
        the metric art_learner_version)."""
        dp = getattr(self, "data_parallel", None)
        replica = f" replica {dp.rank} of {dp.world_size}" if dp and dp.world_size > 1 else ""
        method = getattr(getattr(self, "trained", None), "method", "?")
        run = getattr(getattr(self, "metrics", None), "tags", {}).get("run", "")
        return f"learner{replica} ({method}, run {run})"

    @property
    def on_cuda(self) -> bool:
        return self.policy.device.type == "cuda"

    # ---- what is trained -------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.trained.method

    @property
    def image(self):
        """The image in the prompts: trained (ART) or the fixed seed (LoRA)."""
        return self.trained.image

    @property
    def seed_uint8(self):
        return self.trained.seed_uint8

    def metadata(self) -> dict[str, object]:
        height, width = self.image.size
        return art_metadata(self.model_name, height, width, self.version)

    def image_update(self) -> ImageUpdate:
        return ImageUpdate(version=self.version, png=self.image.to_png(self.metadata()))

    def policy_update(self):
        """What the rollout workers need to sample from the current policy: the PNG (ART) or
        the adapter (LoRA)."""
        return self.trained.policy_update(self.version, self.metadata())

    def trainable(self) -> list[torch.nn.Parameter]:
        return self.trained.parameters()

    def encode(self, grad: bool):
        return self.trained.encode(self.policy, grad)

    @contextmanager
    def at_version(self, version: int):
        """The parameters of an earlier version, for old log-probs of stale completions."""
        if version == self.version:
            yield
            return
        if version not in self.history:
            raise ValueError(
                f"a completion was sampled with version {version}, the learner is at "
                f"{self.version} and keeps {sorted(self.history)} (algo.max_staleness="
                f"{self.max_staleness})"
            )
        params = self.trainable()
        current = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, old in zip(params, self.history[version], strict=True):
                p.copy_(old)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, now in zip(params, current, strict=True):
                    p.copy_(now)

    # ---- data parallel (learner/data_parallel.py; called on every replica by the driver) ----
    def rendezvous(self) -> tuple[str, int]:
        """Replica 0: the address and port the replicas' process group meets at."""
        return self.data_parallel.rendezvous()

    def init_group(self, address: str, port: int, timeout_s: float = 1800.0) -> int:
        """Join the replicas' torch.distributed group (NCCL on GPUs, gloo on CPUs)."""
        return self.data_parallel.join(address, port, timeout_s)

    def parameter_hash(self) -> str:
        """sha256 of the trained tensors (replicas must agree at every checkpoint)."""
        return parameter_hash(self.trainable())

    # ---- log-probs -------------------------------------------------------------------
    def micro_batches(self, batch: Batch, rows: Sequence[int]) -> list[list[int]]:
        """`rows` in forward/backward passes: at most `micro_batch_size` sequences each and,
        with a token budget (`max_tokens_per_micro_batch`, verl's `ppo_max_token_len_per_gpu`),
        at most that many padded tokens, packed longest first so that sequences of like length
        share a pass. A sequence longer than the budget gets a pass of its own. The gradient is
        the same either way: the loss is normalized by the minibatch's token count, not the
        pass's. With the shared-prefix forward a pass costs its distinct prompts once (prompts
        x longest prompt + sequences x longest completion) and the sequences of one prompt
        stay together, longest prompt first; else sequences x longest prompt + completion."""
        rows, size = list(rows), self.micro_batch_size
        shared = self.policy.shared_prefix is not None
        prompt = {i: tuple(batch.prompt_ids[i]) for i in rows}
        if shared:  # by prompt (longest first), then by completion length
            order = sorted(rows, key=lambda r: (-len(prompt[r]), prompt[r], -batch.lengths[r]))
        else:
            order = sorted(rows, key=lambda r: -(len(prompt[r]) + batch.lengths[r]))
        if self.max_tokens_per_micro_batch is None:
            rows = order if shared else rows
            return [rows[i : i + size] for i in range(0, len(rows), size)]

        def cost(sequences: list[int]) -> int:
            if shared:
                prompts = {prompt[i] for i in sequences}
                longest = max(len(p) for p in prompts)
                return len(prompts) * longest + len(sequences) * max(
                    batch.lengths[i] for i in sequences
                )
            return len(sequences) * max(len(prompt[i]) + batch.lengths[i] for i in sequences)

        passes: list[list[int]] = []
        for i in order:  # longest first: padding stays low
            current = passes[-1] if passes else None
            if (
                current is None
                or len(current) >= size
                or cost([*current, i]) > self.max_tokens_per_micro_batch
            ):
                passes.append([i])
            else:
                current.append(i)
        return passes

    def update(self, batch):
        """One learner step on the step's batch (scored groups, or target sequences for the
        objectives that learn from them); returns metrics and the new policy update."""
        return self.objective.update(self, batch)

    def finish_update(self, metrics: dict[str, float]) -> None:
        """The end of every update (policy-gradient, sft, distill): the kernel path, what data
        parallelism cost, the peak memory on cuda, then the metrics recorded."""
        metrics.update(self.kernel_metrics)
        if self.data_parallel.world_size > 1:  # what data parallelism costs: all-reduces, waits
            metrics["learner_allreduce_s"] = self.data_parallel.allreduce_s
        if self.on_cuda:
            metrics["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated())
            if self.settings.release_memory:
                torch.cuda.empty_cache()
        self.record(metrics)

    def commit(self, version: int, before: list[torch.Tensor], stats: list[dict]) -> int:
        """After a batch's optimizer steps: a new version if any moved the parameters (`before`
        kept as `version`'s, for stale completions); returns the number of skipped steps."""
        skipped = sum(s.pop("skipped") for s in stats)
        if skipped < len(stats):  # the pixels moved: a new image version
            self.version += 1
            self.history[version] = before
            oldest = self.version - self.max_staleness
            self.history = {v: h for v, h in self.history.items() if v >= oldest}
        return skipped

    def record(self, metrics: dict[str, float]) -> None:
        """This replica's update figures through Ray's metrics (docs/monitoring.md)."""
        m = self.metrics
        m.set("art_learner_update_seconds", metrics["learner_time_s"], "last update's seconds")
        m.set("art_learner_grad_norm", metrics["grad_norm"], "mean pixel-gradient norm")
        m.set("art_learner_version", self.version, "policy version after the update")
        if "linear_attention_reference" in metrics:  # on cuda: 1 = the slow torch reference
            m.set(
                "art_learner_linear_attention_reference",
                metrics["linear_attention_reference"],
                "1: the linear attention runs the torch reference on cuda",
            )
        if "peak_memory_bytes" in metrics:  # on a GPU: the update's peak allocated bytes
            m.set("art_learner_peak_memory_bytes", metrics["peak_memory_bytes"], "bytes")
        else:  # on the CPU: the process's peak resident set
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            m.set("art_learner_peak_memory_bytes", peak, "bytes")

    def minibatches(self, n: int) -> list[list[int]]:
        """A random split of the batch's sequences into `num_minibatches` parts."""
        order = torch.randperm(n, generator=self.split_rng).tolist()
        parts = [order[i :: self.num_minibatches] for i in range(self.num_minibatches)]
        return [p for p in parts if p]

    def optimizer_step(self, totals: dict[str, float]) -> dict[str, float]:
        """One Adam step with the gradient in `.grad` (the minibatch's, summed over replicas),
        refused when it or the loss is not finite."""
        grads = [p.grad for p in self.trainable()]
        finite_grad = any(g is not None for g in grads) and all(
            bool(torch.isfinite(g).all()) for g in grads if g is not None
        )
        if not (math.isfinite(totals["loss"]) and finite_grad):
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_skips += 1
            logger.warning(
                "non-finite loss or gradient (loss %s): optimizer step skipped (%d in a row)",
                totals["loss"],
                self.consecutive_skips,
            )
            return {**totals, "grad_norm": float("nan"), "skipped": 1}
        max_norm = self.settings.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable(), max_norm).item()
        self.optimizer.step()
        self.consecutive_skips = 0
        return {**totals, "grad_norm": grad_norm, "skipped": 0}

    def sum_over_replicas(self, totals: dict[str, float]) -> dict[str, float]:
        """The trained tensors' gradient and the loss statistics summed over the replicas
        (nothing with one)."""
        if self.data_parallel.world_size > 1:
            for p in self.trainable():
                if p.grad is None:  # an empty share: it adds zero
                    p.grad = torch.zeros_like(p)
            totals_K = torch.tensor(
                list(totals.values()), dtype=torch.float64, device=self.policy.device
            )
            self.data_parallel.all_reduce_([p.grad for p in self.trainable()] + [totals_K])
            totals = dict(zip(totals, totals_K.tolist(), strict=True))
        return totals

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable())

    def info(self) -> dict:

        # start-up time: a heavy library, loaded when this runs
        import ray

        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }

    # ---- state (checkpoints are written by the driver) -----------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: CPU tensors and plain values only, so that a
        checkpoint loads with `torch.load(weights_only=True)` on a machine without the
        learner's device (the driver may run on a head node without a GPU)."""
        height, width = self.image.size
        return {
            "method": self.method,
            "model": self.model_name,
            "height": height,
            "width": width,
            "version": self.version,
            **self.trained.state_dict(),  # theta_CHW, seed_uint8_HWC (and the LoRA adapter)
            "optimizer": to_cpu(self.optimizer.state_dict()),  # a snapshot, not views
            "torch_rng": torch.get_rng_state(),
            "split_rng": self.split_rng.get_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if self.on_cuda else {}),
            "consecutive_skips": self.consecutive_skips,
            "history": {v: [t.cpu() for t in h] for v, h in self.history.items()},
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore `state_dict()`; the driver has checked model, size and method."""
        self.trained.load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])  # moved to the parameters' device
        self.version = int(state["version"])
        torch.set_rng_state(state["torch_rng"])
        if "split_rng" in state:
            self.split_rng.set_state(state["split_rng"])
        if self.on_cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.consecutive_skips = int(state["consecutive_skips"])
        device = self.image.theta_CHW.device
        self.history = {
            int(v): [t.to(device) for t in h] for v, h in state.get("history", {}).items()
        }
        return self.version
