"""The one small interface every rollout engine implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from rollout_worker.hf_engine import HFEngine
from rollout_worker.vllm_engine import VLLMEngine
from shared.messages import Completion, RolloutRequest, SamplingConfig


class Engine(Protocol):
    """Samples `request.n` completions per request, all conditioned on `image`."""

    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]: ...

    def set_adapter(self, version: int, config: dict, weights: bytes) -> None:
        """Apply a LoRA adapter (safetensors bytes, PEFT config) to every later request."""

    def clear_adapter(self) -> None:
        """Sample from the base model again."""


def make_engine(kind: str, model_path: str, **options) -> Engine:
    match kind:
        case "hf":
            return HFEngine(model_path, **options)
        case "vllm":
            return VLLMEngine(model_path, **options)
        case _:
            raise ValueError(f"unknown rollout engine {kind!r}; use 'hf' (CPU) or 'vllm' (GPU)")
