"""The learner: a frozen model copy, the pixel parameter, Adam, and the DAPO update.

Used directly in tests and wrapped as a Ray actor (`name="learner"`) by the driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from learner.dapo import dapo_loss, group_advantages
from learner.pixels import PixelImage
from learner.policy import FrozenPolicy, load_model_and_processor
from learner.preprocess import validate_image_size
from shared.artifact import art_metadata, load_image_file
from shared.messages import Completion, ImageUpdate, ScoredGroup

logger = logging.getLogger(__name__)


def init_pixels(init: str, height: int, width: int, seed: int = 0) -> PixelImage:
    match init:
        case "gray":
            return PixelImage.gray(height, width)
        case "noise":
            return PixelImage.noise(height, width, seed=seed)
        case path:
            return PixelImage.from_uint8(load_image_file(path, size=(height, width)))


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
    ):
        torch.manual_seed(seed)
        self.model_name = model_name
        self.model, self.processor = load_model_and_processor(
            model_path, dtype=dtype, device=device
        )
        self.policy = FrozenPolicy(self.model, self.processor, temperature)
        validate_image_size(height, width, self.policy.spec, model_name)
        self.image = PixelImage.from_uint8(init_pixels(init, height, width, seed).to_uint8()).to(
            device
        )
        self.seed_uint8 = self.image.to_uint8()
        self.optimizer = torch.optim.Adam(self.image.parameters(), lr=lr)
        self.eps_low, self.eps_high = eps_low, eps_high
        self.num_minibatches = num_minibatches
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.version = 0

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
    def compute_logprobs(
        self, prompts: Sequence[str], completions: Sequence[Completion]
    ) -> list[list[float]]:
        """Per-token log-probs of each completion under the current image (no gradient)."""
        encoded = self.policy.encode_image(self.image())
        out: list[list[float]] = []
        for chunk in self._chunks(len(completions)):
            logprobs_BT, mask_BT = self.policy.sequence_logprobs(
                encoded, prompts[chunk], [c.token_ids for c in completions[chunk]]
            )
            for row, mask in zip(logprobs_BT, mask_BT, strict=True):
                out.append(row[mask.bool()].tolist())
        return out

    # ---- the DAPO step -----------------------------------------------------------------
    def update(self, groups: Sequence[ScoredGroup]) -> tuple[dict[str, float], ImageUpdate]:
        """One learner step on a batch of scored groups; returns metrics and the new image."""
        start = time.perf_counter()
        prompts = [g.prompt for g in groups for _ in g.completions]
        completions = [c for g in groups for c in g.completions]
        rewards_GN = [torch.tensor(g.rewards, dtype=torch.float32) for g in groups]
        advantages = torch.cat([group_advantages(r.unsqueeze(0)).squeeze(0) for r in rewards_GN])

        old = self.compute_logprobs(prompts, completions)
        metrics = self._mismatch_metrics(completions, old)
        stale = sum(c.image_version != self.version for c in completions)
        metrics["stale_completion_frac"] = stale / len(completions)

        order = torch.randperm(len(completions)).tolist()
        minibatches = [order[i :: self.num_minibatches] for i in range(self.num_minibatches)]
        totals = {"loss": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 0.0}
        grad_norm = 0.0
        for mb in minibatches:
            if not mb:
                continue
            num_tokens = sum(len(completions[i].token_ids) for i in mb)
            self.optimizer.zero_grad(set_to_none=True)
            for chunk in self._chunks(len(mb)):
                idx = mb[chunk]
                encoded = self.policy.encode_image(self.image())  # graph per micro-batch
                logprobs_BT, mask_BT = self.policy.sequence_logprobs(
                    encoded, [prompts[i] for i in idx], [completions[i].token_ids for i in idx]
                )
                old_BT = torch.zeros_like(logprobs_BT)
                for row, i in enumerate(idx):
                    old_BT[row, : len(old[i])] = torch.tensor(old[i])
                loss, stats = dapo_loss(
                    logprobs_BT,
                    old_BT,
                    advantages[idx].to(logprobs_BT.device),
                    mask_BT,
                    self.eps_low,
                    self.eps_high,
                    num_tokens=num_tokens,
                )
                loss.backward()
                totals["loss"] += loss.item() / len(minibatches)
                for key in ("clip_frac_low", "clip_frac_high", "ratio_mean"):
                    totals[key] += stats[key] / len(minibatches)
            if self.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.image.parameters(), self.max_grad_norm
                ).item()
            else:
                grad_norm = self.image.theta_CHW.grad.norm().item()
            self.optimizer.step()

        self.version += 1
        update = self.image_update()
        metrics.update(totals)
        metrics.update(
            {
                "grad_norm": grad_norm,
                "pixel_distance": self.pixel_distance_from_seed(),
                "png_bytes": float(len(update.png)),
                "num_sequences": float(len(completions)),
                "learner_time_s": time.perf_counter() - start,
            }
        )
        return metrics, update

    @staticmethod
    def _mismatch_metrics(
        completions: Sequence[Completion], learner_logprobs: list[list[float]]
    ) -> dict:
        rollout = np.concatenate([np.asarray(c.logprobs) for c in completions])
        learner = np.concatenate([np.asarray(lp) for lp in learner_logprobs])
        log_ratio = learner - rollout  # log p_learner / p_rollout on rollout samples
        return {
            "logprob_mean": float(learner.mean()),
            "mismatch_abs_mean": float(np.abs(log_ratio).mean()),
            # k3 estimator of KL(rollout || learner): E[(r - 1) - log r], r = p_learner/p_rollout
            "mismatch_kl": float(np.mean(np.expm1(log_ratio) - log_ratio)),
        }

    def info(self) -> dict:
        import os
        import socket

        import ray

        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }

    # ---- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, path: str) -> str:
        path_ = Path(path)
        path_.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "theta_CHW": self.image.theta_CHW.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.version,
            "seed_uint8": self.seed_uint8,
            "model": self.model_name,
        }
        tmp = path_.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path_)  # atomic: a crash never leaves a half-written checkpoint
        return str(path_)

    def load_checkpoint(self, path: str) -> int:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["model"] != self.model_name:
            raise ValueError(
                f"checkpoint {path} was trained for {state['model']}, not {self.model_name}"
            )
        if tuple(state["theta_CHW"].shape) != tuple(self.image.theta_CHW.shape):
            raise ValueError(
                f"checkpoint {path} holds an image of shape {tuple(state['theta_CHW'].shape)}, "
                f"config asks for {tuple(self.image.theta_CHW.shape)}"
            )
        with torch.no_grad():
            self.image.theta_CHW.copy_(state["theta_CHW"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["step"])
        self.seed_uint8 = state["seed_uint8"]
        return self.version
