"""The one small interface every rollout engine implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from shared.engines import engine_spec
from shared.messages import Completion, RolloutRequest, SamplingConfig
from shared.tasks.entrypoints import load_entry


class Engine(Protocol):
    """Samples `request.n` completions per request, all conditioned on `image`."""

    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
        images: dict | None = None,
    ) -> list[list[Completion]]:
        """`images` ({image_key: (image, version)}) only in a multi-task run: each request
        names its task's image (`RolloutRequest.image_key`; `rollout_worker/images.py`) and
        may carry its own seed base (`shared.sampling.seed_of`)."""

    def set_adapter(self, version: int, config: dict, weights: bytes) -> None:
        """Apply a LoRA adapter (safetensors bytes, PEFT config) to every later request."""

    def clear_adapter(self) -> None:
        """Sample from the base model again."""


def make_engine(kind: str, model_path: str, **options) -> Engine:
    """The engine `kind` names (`rollout.engine`), built from its spec's class
    (shared/engines.py)."""
    return load_entry(engine_spec(kind).engine_class, "rollout.engine")(model_path, **options)
