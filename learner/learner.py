"""The learner: a frozen model copy, the pixel parameter, Adam, and the DAPO update.

Used directly in tests and wrapped as a Ray actor (`name="learner"`) by the driver.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from learner.dapo import dapo_loss, group_advantages
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor
from learner.preprocess import validate_image_size
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
        num_minibatches: int = 1,
        micro_batch_size: int = 32,
        max_grad_norm: float = 0.0,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        activation_checkpointing: bool = False,
        task_icon: str = "math",
        background: str = "white",
    ):
        torch.manual_seed(seed)
        self.model_name = model_name
        self.model, self.processor = load_model_and_processor(
            model_path, dtype=dtype, device=device
        )
        self.policy = FrozenPolicy(
            self.model, self.processor, temperature, activation_checkpointing
        )
        validate_image_size(height, width, self.policy.spec, model_name)
        self.image = init_pixels(init, height, width, seed, task_icon, background).to(device)
        self.seed_uint8 = self.image.to_uint8()
        self.optimizer = torch.optim.Adam(self.image.parameters(), lr=lr)
        self.eps_low, self.eps_high = eps_low, eps_high
        self.num_minibatches = num_minibatches
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.version = 0
        self.consecutive_skips = 0  # optimizer steps refused in a row (non-finite)

    # ---- the image -------------------------------------------------------------------
    def metadata(self) -> dict[str, object]:
        height, width = self.image.size
        return art_metadata(self.model_name, height, width, self.version)

    def image_update(self) -> ImageUpdate:
        return ImageUpdate(version=self.version, png=self.image.to_png(self.metadata()))

    def pixel_distance_from_seed(self) -> float:
        """Mean absolute uint8 difference to the seed image, in [0, 255]."""
        diff = self.image.to_uint8().astype(np.int16) - self.seed_uint8.astype(np.int16)
        return float(np.abs(diff).mean())

    # ---- log-probs -------------------------------------------------------------------
    def _chunks(self, n: int) -> list[slice]:
        size = self.micro_batch_size
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    @torch.no_grad()
    def compute_logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        """Per-token log-probs of each completion under the current image (no gradient)."""
        batch = Batch.from_completions(completions)
        logprobs_BT = self.old_logprobs(batch)
        return [row[:n].tolist() for row, n in zip(logprobs_BT, batch.lengths, strict=True)]

    @torch.no_grad()
    def old_logprobs(self, batch: Batch) -> torch.Tensor:
        """(B, T) log-probs of the batch under the current image, padded once with zeros."""
        encoded = self.policy.encode_image(self.image())
        old_BT = torch.zeros(len(batch), batch.max_len, device=self.policy.device)
        for chunk in self._chunks(len(batch)):
            logprobs_BT, _ = self.policy.sequence_logprobs(
                encoded, batch.prompt_ids[chunk], batch.token_ids[chunk]
            )
            old_BT[chunk, : logprobs_BT.shape[1]] = logprobs_BT
        return old_BT

    # ---- the DAPO step -----------------------------------------------------------------
    def update(self, groups: Sequence[ScoredGroup]) -> tuple[dict[str, float], ImageUpdate]:
        """One learner step on a batch of scored groups; returns metrics and the new image."""
        start = time.perf_counter()
        batch = Batch.from_groups(groups)
        advantages_B = group_advantages(batch.rewards_GN).reshape(-1)
        old_BT = self.old_logprobs(batch)
        metrics = mismatch_metrics(batch, old_BT, self.version)
        stats = [
            self.minibatch_step(batch, indices, old_BT, advantages_B)
            for indices in self.minibatches(len(batch))
        ]
        skipped = sum(s.pop("skipped") for s in stats)
        if skipped < len(stats):  # the pixels moved: a new image version
            self.version += 1
        update = self.image_update()
        taken = [s for s in stats if math.isfinite(s["loss"])] or stats
        metrics.update({k: float(np.mean([s[k] for s in taken])) for k in taken[0]})
        metrics["skipped_updates"] = float(skipped)
        metrics["consecutive_skips"] = float(self.consecutive_skips)
        metrics.update(
            {
                "grad_norm": stats[-1]["grad_norm"],
                "pixel_distance": self.pixel_distance_from_seed(),
                "png_bytes": float(len(update.png)),
                "num_sequences": float(len(batch)),
                "learner_time_s": time.perf_counter() - start,
            }
        )
        return metrics, update

    def minibatches(self, n: int) -> list[list[int]]:
        """A random split of the batch's sequences into `num_minibatches` parts."""
        order = torch.randperm(n).tolist()
        parts = [order[i :: self.num_minibatches] for i in range(self.num_minibatches)]
        return [p for p in parts if p]

    def minibatch_step(
        self, batch: Batch, indices: list[int], old_BT: torch.Tensor, advantages_B: torch.Tensor
    ) -> dict[str, float]:
        """Gradient accumulation over micro-batches, then one Adam step on the pixel logits.

        A NaN or inf in the loss or the gradient refuses the step: the gradient is dropped,
        the pixels and Adam's state stay as they were (`skipped` = 1)."""
        num_tokens = sum(batch.lengths[i] for i in indices)
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 0.0}
        for chunk in self._chunks(len(indices)):
            idx = indices[chunk]
            encoded = self.policy.encode_image(self.image())
            logprobs_BT, mask_BT = self.policy.sequence_logprobs(
                encoded, [batch.prompt_ids[i] for i in idx], [batch.token_ids[i] for i in idx]
            )
            width = logprobs_BT.shape[1]
            loss, stats = dapo_loss(
                logprobs_BT,
                old_BT[idx, :width],
                advantages_B[idx].to(logprobs_BT.device),
                mask_BT,
                self.eps_low,
                self.eps_high,
                num_tokens=num_tokens,
            )
            loss.backward()
            totals["loss"] += loss.item()
            for key in ("clip_frac_low", "clip_frac_high", "ratio_mean"):
                totals[key] += stats[key]
        grad = self.image.theta_CHW.grad
        if not (math.isfinite(totals["loss"]) and bool(torch.isfinite(grad).all())):
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_skips += 1
            logger.warning(
                "non-finite loss or gradient (loss %s): optimizer step skipped (%d in a row)",
                totals["loss"],
                self.consecutive_skips,
            )
            return {**totals, "grad_norm": float("nan"), "skipped": 1}
        if self.max_grad_norm > 0:
            params = self.image.parameters()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm).item()
        else:
            grad_norm = grad.norm().item()
        self.optimizer.step()
        self.consecutive_skips = 0
        return {**totals, "grad_norm": grad_norm, "skipped": 0}

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
        """Everything needed to continue exactly: tensors and plain values only, so that a
        checkpoint loads with `torch.load(weights_only=True)`."""
        height, width = self.image.size
        return {
            "method": "art",
            "model": self.model_name,
            "height": height,
            "width": width,
            "version": self.version,
            "theta_CHW": self.image.theta_CHW.detach().cpu().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not views
            "seed_uint8_HWC": torch.from_numpy(self.seed_uint8.copy()),
            "torch_rng": torch.get_rng_state(),
            "consecutive_skips": self.consecutive_skips,
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore `state_dict()`; the driver has checked model, size and method."""
        with torch.no_grad():
            self.image.theta_CHW.copy_(state["theta_CHW"].to(self.image.theta_CHW.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.seed_uint8 = state["seed_uint8_HWC"].numpy().copy()
        torch.set_rng_state(state["torch_rng"])
        self.consecutive_skips = int(state["consecutive_skips"])
        return self.version
