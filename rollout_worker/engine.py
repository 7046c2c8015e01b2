"""The one small interface every rollout engine implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from shared.messages import Completion, RolloutRequest, SamplingConfig

VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class Engine(Protocol):
    """Samples `request.n` completions per request, all conditioned on `image`."""

    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]: ...


def suppressed_token_ids(tokenizer) -> list[int]:
    """Vision special tokens: a completion holding one cannot be fed back to the model."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)


def make_engine(kind: str, model_path: str, **options) -> Engine:
    match kind:
        case "hf":
            from rollout_worker.hf_engine import HFEngine

            return HFEngine(model_path, **options)
        case "vllm":
            from rollout_worker.vllm_engine import VLLMEngine

            return VLLMEngine(model_path, **options)
        case _:
            raise ValueError(f"unknown rollout engine {kind!r}; use 'hf' (CPU) or 'vllm' (GPU)")
