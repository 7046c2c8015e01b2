"""The learner: a frozen model copy, what is trained (`learner/trained.py`), Adam, and the
update: a policy-gradient loss on scored groups (`algo.loss`, DAPO by default:
`learner/objectives/`), or, for sft and distill, an update on target sequences
(`learner/supervised.py`).

Used directly in tests and wrapped as a Ray actor (`name="learner"`) by the driver.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from learner.dapo import group_advantages
from learner.data_parallel import DataParallel, parameter_hash
from learner.linear_attention import report_kernel_paths
from learner.objectives import TARGET_OBJECTIVES, LossSettings, get_policy_loss
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor
from learner.preprocess import validate_image_size
from learner.rollout_correction import correction_metrics, correction_weights
from learner.trained import make_trained
from shared.artifact import art_metadata
from shared.images import seed_image
from shared.messages import Completion, ImageUpdate, ScoredGroup

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


@dataclass
class Batch:
    """A learner batch, flattened group by group: sequence b is completion b % G of group b // G."""

    prompt_ids: list[tuple[int, ...]]
    token_ids: list[tuple[int, ...]]
    rollout_logprobs: list[tuple[float, ...]]
    image_versions: list[int]
    rewards_GN: torch.Tensor  # (groups, G)

    @classmethod
    def from_groups(cls, groups: Sequence[ScoredGroup]) -> Batch:
        sizes = {len(g.completions) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"every group of a batch needs the same size, got sizes {sizes}")
        batch = cls.from_completions([c for g in groups for c in g.completions])
        batch.rewards_GN = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        return batch

    @classmethod
    def from_completions(cls, completions: Sequence[Completion]) -> Batch:
        return cls(
            prompt_ids=[c.prompt_token_ids for c in completions],
            token_ids=[c.token_ids for c in completions],
            rollout_logprobs=[c.logprobs for c in completions],
            image_versions=[c.image_version for c in completions],
            rewards_GN=torch.zeros(0, 0),
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def rollout_logprobs_BT(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's log-probs padded to (B, T), and the mask of real tokens."""
        rollout_BT = torch.zeros(len(self), self.max_len)
        mask_BT = torch.zeros(len(self), self.max_len)
        for i, lp in enumerate(self.rollout_logprobs):
            rollout_BT[i, : len(lp)] = torch.tensor(lp)
            mask_BT[i, : len(lp)] = 1.0
        return rollout_BT.to(device), mask_BT.to(device)


def mismatch_metrics(batch: Batch, learner_BT: torch.Tensor, version: int) -> dict[str, float]:
    """How far the rollout engine's log-probs are from the learner's on the sampled tokens."""
    rollout = np.concatenate([np.asarray(lp, dtype=np.float64) for lp in batch.rollout_logprobs])
    learner = np.concatenate(
        [row[:n].double().cpu().numpy() for row, n in zip(learner_BT, batch.lengths, strict=True)]
    )
    log_ratio = learner - rollout  # log p_learner / p_rollout on rollout samples
    stale = sum(v != version for v in batch.image_versions)
    return {
        "logprob_mean": float(learner.mean()),
        "mismatch_abs_mean": float(np.abs(log_ratio).mean()),
        # k3 estimator of KL(rollout || learner): E[(r - 1) - log r], r = p_learner/p_rollout
        "mismatch_kl": float(np.mean(np.expm1(log_ratio) - log_ratio)),
        "stale_completion_frac": stale / len(batch),
    }


class Learner:
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

    def __init__(
        self,
        model_path: str,
        model_name: str,
        height: int,
        width: int,
        init: str = "gray",
        lr: float = 0.05,
        temperature: float = 1.0,
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        clip_ratio_c: float | None = None,
        num_minibatches: int = 1,
        micro_batch_size: int = 32,
        max_tokens_per_micro_batch: int | None = None,
        max_grad_norm: float = 0.0,
        max_staleness: int = 0,
        rollout_correction: str = "off",
        rollout_correction_cap: float = 2.0,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        activation_checkpointing: bool = False,
        shared_prefix: bool = True,
        task_icon: str = "math",
        background: str = "white",
        method: str = "art",
        lora: dict | None = None,
        with_image: bool = True,
        release_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
        run_id: str = "",
        loss: str = "dapo",
        loss_agg_mode: str | None = None,
        norm_adv_by_std: bool | None = None,
        loss_scale_factor: int | None = None,
        distill_direction: str = "forward",
    ):
        torch.manual_seed(seed)  # the same seed on every replica: the same minibatch split
        # the minibatch split's own generator: the same draws on every replica, whatever else
        # uses torch's default one (LoRA dropout draws per sequence of a replica's share)
        self.split_rng = torch.Generator().manual_seed(seed)
        from learner.metrics import RayMetrics

        self.metrics = RayMetrics(run=run_id, replica=str(rank))
        self.model_name = model_name
        self.model, self.processor = load_model_and_processor(
            model_path, dtype=dtype, device=device
        )
        self.policy = FrozenPolicy(
            self.model,
            self.processor,
            temperature,
            activation_checkpointing,
            shared_prefix=shared_prefix,
        )
        # which kernels run the linear attention (logged; on cuda a metric: the torch reference?)
        self.kernel_metrics = report_kernel_paths(self.model, self.policy.device)
        # data-parallel replicas (`init_group`): rank r of world_size
        self.data_parallel = DataParallel(rank, world_size, self.on_cuda)
        validate_image_size(height, width, self.policy.spec, model_name)
        image = init_pixels(init, height, width, seed, task_icon, background).to(device)
        self.trained = make_trained(method, self.model, image, model_name, lora, with_image)
        self.optimizer = torch.optim.Adam(self.trained.parameters(), lr=lr)
        self.eps_low, self.eps_high, self.clip_ratio_c = eps_low, eps_high, clip_ratio_c
        # the objective (learner/objectives/): a registered policy loss, or sft / distill
        self.loss, self.distill_direction = loss, distill_direction
        spec = None if loss in TARGET_OBJECTIVES else get_policy_loss(loss)
        self.policy_loss = spec.fn if spec else None
        self.loss_agg_mode = loss_agg_mode or (spec.loss_agg_mode if spec else "token-mean")
        own_norm = spec.norm_adv_by_std if spec else True
        self.norm_adv_by_std = own_norm if norm_adv_by_std is None else norm_adv_by_std
        self.loss_scale_factor = loss_scale_factor
        self.num_minibatches = num_minibatches
        self.micro_batch_size = micro_batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.max_grad_norm = max_grad_norm
        self.max_staleness = max_staleness
        self.correction, self.correction_cap = rollout_correction, rollout_correction_cap
        # after each update, hand the allocator's cached blocks back (a sleeping vLLM engine on
        # the same GPU wakes up into them: cluster=single_gpu)
        self.release_memory = release_memory
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

    @torch.no_grad()
    def compute_logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        """Per-token log-probs of each completion under the current image (no gradient)."""
        batch = Batch.from_completions(completions)
        batch.image_versions = [self.version] * len(batch)
        logprobs_BT = self.old_logprobs(batch, skip=set())
        return [row[:n].tolist() for row, n in zip(logprobs_BT, batch.lengths, strict=True)]

    @torch.no_grad()
    def old_logprobs(self, batch: Batch, skip: set[int]) -> torch.Tensor:
        """(B, T) log-probs of every sequence not in `skip` under the image it was sampled
        with: one encode and no-gradient pass per image version. Rows in `skip` stay zero
        (the first minibatch fills them from its own forward)."""
        old_BT = torch.zeros(len(batch), batch.max_len, device=self.policy.device)
        todo: dict[int, list[int]] = {}
        for i, version in enumerate(batch.image_versions):
            if i not in skip:
                todo.setdefault(version, []).append(i)
        for version, rows in sorted(todo.items()):
            with self.at_version(version):  # the image (ART) or the adapter (LoRA) of then
                encoded = self.encode(grad=False)
                for idx in self.micro_batches(batch, rows):
                    prompts = [batch.prompt_ids[i] for i in idx]
                    logprobs_BT, _ = self.policy.sequence_logprobs(
                        encoded, prompts, [batch.token_ids[i] for i in idx]
                    )
                    old_BT[idx, : logprobs_BT.shape[1]] = logprobs_BT
        return old_BT

    # ---- the DAPO step -----------------------------------------------------------------
    def update(self, groups: Sequence[ScoredGroup]):
        """One learner step on a batch of scored groups (sft, distill: of `TargetSequence`s,
        `learner/supervised.py`); returns metrics and the new image."""
        if self.loss in TARGET_OBJECTIVES:
            from learner.supervised import fit_targets

            return fit_targets(self, groups)
        start, self.data_parallel.allreduce_s = time.perf_counter(), 0.0
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats()  # peak_memory_bytes: this update's
        batch = Batch.from_groups(groups)
        version = self.version
        before = [p.detach().clone() for p in self.trainable()]
        advantages_B = group_advantages(batch.rewards_GN, norm_by_std=self.norm_adv_by_std)
        advantages_B = advantages_B.reshape(-1)
        minibatches = self.minibatches(len(batch))
        # this replica's rows of each minibatch: all of them with one learner
        mine = [self.data_parallel.share(batch, indices) for indices in minibatches]
        # the first minibatch's forward doubles as its old log-probs, unless it is not the
        # old policy's own (LoRA dropout acts in that forward)
        reuse = (
            {i for i in mine[0] if batch.image_versions[i] == version}
            if self.trained.deterministic_forward
            else set()
        )
        others = set(range(len(batch))).difference(*mine)  # other replicas' rows
        old_BT = self.old_logprobs(batch, skip=reuse | others)
        stats = [
            self.minibatch_step(
                batch,
                rows,
                old_BT,
                advantages_B,
                reuse if k == 0 else set(),
                num_tokens=sum(batch.lengths[i] for i in minibatches[k]),
                num_sequences=len(minibatches[k]),
            )
            for k, rows in enumerate(mine)
        ]
        self.data_parallel.all_reduce_([old_BT])  # every row was computed by one replica
        metrics = mismatch_metrics(batch, old_BT, version)
        rollout_BT, mask_BT = batch.rollout_logprobs_BT(old_BT.device)
        corrections = correction_metrics(old_BT, rollout_BT, mask_BT, self.correction_cap)
        metrics.update({f"rollout_corr/{k}": v for k, v in corrections.items()})
        skipped = self.commit(version, before, stats)
        update = self.policy_update()
        taken = [s for s in stats if math.isfinite(s["loss"])] or stats
        metrics.update({k: float(np.mean([s[k] for s in taken])) for k in taken[0]})
        metrics.update({k: float(v) for k, v in self.trained.update_metrics(update).items()})
        metrics.update(
            {
                "skipped_updates": float(skipped),
                "consecutive_skips": float(self.consecutive_skips),
                # one no-gradient pass per image version among the rows not reused
                "old_logprob_passes": float(
                    len(
                        {
                            v
                            for i, v in enumerate(batch.image_versions)
                            if i not in reuse and i not in others
                        }
                    )
                ),
                # the mean over the minibatches' optimizer steps (skipped ones left out)
                "grad_norm": mean_finite([s["grad_norm"] for s in stats]),
                "num_sequences": float(len(batch)),
                "learner_time_s": time.perf_counter() - start,
            }
        )
        self.finish_update(metrics)
        return metrics, update

    def finish_update(self, metrics: dict[str, float]) -> None:
        """The end of every update (policy-gradient, sft, distill): the kernel path, what data
        parallelism cost, the peak memory on cuda, then the metrics recorded."""
        metrics.update(self.kernel_metrics)
        if self.data_parallel.world_size > 1:  # what data parallelism costs: all-reduces, waits
            metrics["learner_allreduce_s"] = self.data_parallel.allreduce_s
        if self.on_cuda:
            metrics["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated())
            if self.release_memory:
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
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            m.set("art_learner_peak_memory_bytes", peak, "bytes")

    def minibatches(self, n: int) -> list[list[int]]:
        """A random split of the batch's sequences into `num_minibatches` parts."""
        order = torch.randperm(n, generator=self.split_rng).tolist()
        parts = [order[i :: self.num_minibatches] for i in range(self.num_minibatches)]
        return [p for p in parts if p]

    def minibatch_step(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int],
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The minibatch's gradient, then one Adam step on the pixel logits. A NaN or inf in
        the loss or the gradient refuses the step: the gradient is dropped, the pixels and
        Adam's state stay as they were (`skipped` = 1). With replicas, `indices` is this
        replica's share and `num_tokens`, `num_sequences` the whole minibatch's."""
        totals = self.minibatch_gradient(
            batch, indices, old_BT, advantages_B, fill_old, num_tokens, num_sequences
        )
        return self.optimizer_step(totals)

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
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable(), max_norm).item()
        self.optimizer.step()
        self.consecutive_skips = 0
        return {**totals, "grad_norm": grad_norm, "skipped": 0}

    def minibatch_gradient(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int],
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The minibatch's gradient in the trained tensors' `.grad`, and its loss statistics:
        with replicas, both summed over them (the only all-reduce of a step)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = self.accumulate_gradient(
            batch, indices, old_BT, advantages_B, fill_old, num_tokens, num_sequences
        )
        return self.sum_over_replicas(totals)

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

    def batch_gradient(self, groups: Sequence[ScoredGroup]) -> list[torch.Tensor]:
        """The DAPO gradient of a batch of fresh completions as one minibatch (the update's
        first gradient; with replicas, all-reduced), without a step: CPU copies, in the order
        of `trainable()`. For tests and art-bench; the learner stays as it was."""
        batch = Batch.from_groups(groups)
        batch.image_versions = [self.version] * len(batch)
        advantages_B = group_advantages(batch.rewards_GN, norm_by_std=self.norm_adv_by_std)
        advantages_B = advantages_B.reshape(-1)
        rows = list(range(len(batch)))
        mine = self.data_parallel.share(batch, rows)
        old_BT = torch.zeros(len(batch), batch.max_len, device=self.policy.device)
        self.minibatch_gradient(
            batch, mine, old_BT, advantages_B, set(mine), sum(batch.lengths), len(batch)
        )
        grads = [p.grad.detach().cpu().clone() for p in self.trainable()]
        self.optimizer.zero_grad(set_to_none=True)
        return grads

    def accumulate_gradient(
        self,
        batch: Batch,
        indices: list[int],
        old_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        fill_old: set[int] = frozenset(),
        num_tokens: int | None = None,
        num_sequences: int | None = None,
    ) -> dict[str, float]:
        """The policy loss of the minibatch `indices` backpropagated into the pixel logits: one
        encode, micro-batches accumulating into the image features (a leaf), then one backward
        through the vision tower. Rows in `fill_old` take their old log-probs from this forward
        (the policy has not moved yet). `num_tokens`, `num_sequences`: the aggregation's
        denominators, the minibatch's token and sequence counts (default: those of
        `indices`)."""
        if num_tokens is None:
            num_tokens = sum(batch.lengths[i] for i in indices)
        if num_sequences is None:
            num_sequences = len(indices)
        settings = LossSettings(
            self.eps_low,
            self.eps_high,
            self.clip_ratio_c,
            self.loss_agg_mode,
            num_tokens,
            num_sequences,
            self.loss_scale_factor,
        )
        rollout_BT, _ = batch.rollout_logprobs_BT(self.policy.device)
        keys = ("loss", "clip_frac_low", "clip_frac_high", "clip_frac_dual", "ratio_mean")
        totals = dict.fromkeys(keys, 0.0)
        with self.trained.gradient_pass(self.policy) as encoded:
            for idx in self.micro_batches(batch, indices):
                logprobs_BT, mask_BT = self.policy.sequence_logprobs(
                    encoded, [batch.prompt_ids[i] for i in idx], [batch.token_ids[i] for i in idx]
                )
                width = logprobs_BT.shape[1]
                for row, i in enumerate(idx):
                    if i in fill_old:
                        old_BT[i, :width] = logprobs_BT[row].detach()
                weights_BT = correction_weights(  # after the old log-probs are all in
                    old_BT[idx, :width],
                    rollout_BT[idx, :width],
                    mask_BT,
                    self.correction,
                    self.correction_cap,
                )
                loss, stats = self.policy_loss(
                    logprobs_BT,
                    old_BT[idx, :width],
                    advantages_B[idx].to(logprobs_BT.device),
                    mask_BT,
                    settings,
                    weights_BT,
                )
                loss.backward()
                totals["loss"] += loss.item()
                for key in keys[1:]:
                    totals[key] += stats[key]
        return totals

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable())

    def info(self) -> dict:
        import os
        import socket

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


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def to_cpu(obj):
    """A deep copy with every tensor on the CPU (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
