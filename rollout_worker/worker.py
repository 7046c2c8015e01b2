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
from shared.messages import Completion, ImageUpdate, RolloutRequest, SamplingConfig


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, worker_index: int = 0, **engine_options):
        self.worker_index = worker_index
        self.engine = make_engine(engine, model_path, **engine_options)
        self.version: int | None = None
        self.image = None
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

    def generate(
        self, requests: list[RolloutRequest], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        if any(r.with_image for r in requests) and (self.image is None or self.version is None):
            raise RuntimeError(
                f"rollout-worker-{self.worker_index} has no image yet: call set_image first"
            )
        version = -1 if self.version is None else self.version
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
