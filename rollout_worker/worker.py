"""The RolloutWorker Ray actor: owns one engine and the current image.

The engine is created once and never reloaded; a new image is a new PIL image handed to the
engine on the next `generate`. Every completion carries the version of the image it was
sampled with.
"""

from __future__ import annotations

import os
import socket

from rollout_worker.engine import make_engine
from shared.artifact import png_to_pil
from shared.messages import (
    AdapterUpdate,
    Completion,
    ImageUpdate,
    RolloutRequest,
    SamplingConfig,
)


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, worker_index: int = 0, **engine_options):
        self.worker_index = worker_index
        self.engine = make_engine(engine, model_path, **engine_options)
        self.version: int | None = None
        self.image = None
        self.adapter_version: int | None = None
        self.served = {"requests": 0, "completions": 0, "tokens": 0}

    def set_image(self, version: int, png: bytes) -> int:
        update = ImageUpdate(version=version, png=png)  # checks the PNG signature
        if self.version is not None and version < self.version:
            raise ValueError(
                f"set_image: image version went back from {self.version} to {version}; "
                "versions only increase (a new run needs new workers)"
            )
        try:
            image = png_to_pil(update.png)  # decodes every pixel: a truncated file fails here
        except Exception as err:
            raise ValueError(
                f"set_image(version={version}): the PNG cannot be decoded ({err}); broadcast "
                "the bytes of a complete PNG file"
            ) from err
        self.image, self.version = image, version
        return version

    def set_adapter(self, version: int, config: dict, weights: bytes) -> int:
        """A new version of the LoRA adapter (`method=lora`): the engine applies it to every
        request from now on; the base model is never reloaded."""
        update = AdapterUpdate(version=version, weights=weights, config=config)  # validates
        if self.adapter_version is not None and version < self.adapter_version:
            raise ValueError(
                f"set_adapter: adapter version went back from {self.adapter_version} to {version}"
            )
        self.engine.set_adapter(update.version, update.config, update.weights)
        self.adapter_version = version
        return version

    def clear_adapter(self) -> None:
        """Sample from the base model again (an adapter applied later comes back)."""
        self.engine.clear_adapter()
        self.adapter_version = None

    def generate(
        self, requests: list[RolloutRequest], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        if any(r.with_image for r in requests) and (self.image is None or self.version is None):
            raise RuntimeError(
                f"rollout-worker-{self.worker_index} has no image yet: call set_image first"
            )
        # Completions carry the version of the policy they were sampled with: the adapter's
        # under LoRA, else the image's.
        version = self.adapter_version if self.adapter_version is not None else self.version
        version = -1 if version is None else version
        groups = self.engine.generate(requests, self.image, version, sampling)
        self.served["requests"] += len(requests)
        self.served["completions"] += sum(len(g) for g in groups)
        self.served["tokens"] += sum(len(c.token_ids) for g in groups for c in g)
        return groups

    def stats(self) -> dict[str, int]:
        """What this worker has sampled so far (requests, completions, tokens)."""
        return dict(self.served)

    def image_version(self) -> int | None:
        return self.version

    def info(self) -> dict:
        info = {
            "worker_index": self.worker_index,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            import ray

            info["node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:  # not inside Ray
            info["node_id"] = None
        return info
