"""The RolloutWorker Ray actor: owns one engine and the current image.

The engine is created once and never reloaded; a new image is a new PIL image handed to the
engine on the next `generate`. Every completion carries the version of the image it was
sampled with.
"""

from __future__ import annotations

import functools
import os
import socket
import time

from rollout_worker.engine import make_engine
from rollout_worker.metrics import ray_metrics
from shared.artifact import png_to_pil
from shared.messages import (
    AdapterUpdate,
    Completion,
    ImageUpdate,
    RolloutRequest,
    SamplingConfig,
    WorkerSettings,
)


def portable(err: Exception) -> Exception:
    """An error the driver can unpickle: the driver's environment may lack the engine's
    packages (vLLM runs in its own), and Ray re-raises an actor's exception there. Errors of
    other libraries become a RuntimeError that names the original type."""
    module = type(err).__module__
    if module == "builtins" or module.startswith(("shared.", "rollout_worker.")):
        return err
    return RuntimeError(f"{module}.{type(err).__name__}: {err}")


def _engine_errors_portable(method):

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as err:
            converted = portable(err)
            if converted is err:
                raise
            raise converted from None

    return wrapper


class RolloutWorker:
    @_engine_errors_portable
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.worker_index, self.engine_name = settings.worker_index, settings.engine
        self.run_id = settings.run_id
        self.metrics = ray_metrics(run=settings.run_id, worker=str(settings.worker_index))
        self.engine = make_engine(settings.engine, settings.model_path, **settings.engine_options)
        self.version: int | None = None
        self.image = None
        self.images: dict[str, tuple] = {}  # a multi-task run: task -> (image, version)
        self.adapter_version: int | None = None
        self.served = {"requests": 0, "completions": 0, "tokens": 0}
        # a process Ray restarted counts again from here: Prometheus reads it as a restart
        self.metrics.inc("art_worker_engine_starts", 1, "engines this worker process started")

    def __repr__(self) -> str:
        """The Ray dashboard's Repr column. Ray takes it once, when the actor starts (checked
        on Ray 2.60), so it names the role and engine; the image version served is the
        metric art_worker_image_version (docs/monitoring.md)."""
        index, engine = getattr(self, "worker_index", "?"), getattr(self, "engine_name", "?")
        return f"rollout-worker-{index} ({engine} engine, run {getattr(self, 'run_id', '')})"

    def set_image(self, version: int, png: bytes, key: str = "") -> int:
        """The image requests are sampled with from now on: the run's (`key` ""), or a task's
        of a multi-task run (requests name it: `RolloutRequest.image_key`)."""
        update = ImageUpdate(version=version, png=png)  # checks the PNG signature
        current = self.images.get(key, (None, None))[1] if key else self.version
        if current is not None and version < current:
            raise ValueError(
                f"set_image: image version{f' of task {key!r}' if key else ''} went back from "
                f"{current} to {version}; versions only increase (a new run needs new workers)"
            )
        try:
            image = png_to_pil(update.png)  # decodes every pixel: a truncated file fails here
        except Exception as err:
            raise ValueError(
                f"set_image(version={version}): the PNG cannot be decoded ({err}); broadcast "
                "the bytes of a complete PNG file"
            ) from err
        if key:
            self.images[key] = (image, version)
            return version
        self.image, self.version = image, version
        self.metrics.set("art_worker_image_version", version, "image version this worker serves")
        return version

    def drop_image(self, key: str) -> None:
        """Forget a task's image (a task that left a multi-task run)."""
        self.images.pop(key, None)

    @_engine_errors_portable
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
        self.metrics.set("art_worker_adapter_version", version, "LoRA adapter version served")
        return version

    def clear_adapter(self) -> None:
        """Sample from the base model again (an adapter applied later comes back)."""
        self.engine.clear_adapter()
        self.adapter_version = None

    @_engine_errors_portable
    def generate(
        self, requests: list[RolloutRequest], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        if any(r.with_image and not r.image_key for r in requests) and (
            self.image is None or self.version is None
        ):
            raise RuntimeError(
                f"rollout-worker-{self.worker_index} has no image yet: call set_image first"
            )
        # Completions carry the version of the policy they were sampled with: the adapter's
        # under LoRA, else the image's.
        version = self.adapter_version if self.adapter_version is not None else self.version
        version = -1 if version is None else version
        start = time.perf_counter()
        keyed = {"images": dict(self.images)} if self.images else {}  # a multi-task run's
        groups = self.engine.generate(requests, self.image, version, sampling, **keyed)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for g in groups for c in g)
        self.served["requests"] += len(requests)
        self.served["completions"] += sum(len(g) for g in groups)
        self.served["tokens"] += tokens
        m = self.metrics
        m.inc("art_worker_requests", len(requests), "requests (prompts) served")
        m.inc("art_worker_completion_tokens", tokens, "completion tokens sampled")
        m.set("art_worker_tokens_per_second", tokens / max(seconds, 1e-9), "last chunk's tok/s")
        return groups

    @_engine_errors_portable
    def sleep(self) -> bool:
        """Free the accelerator while the learner updates (engines with a sleep mode)."""
        return bool(getattr(self.engine, "sleep", lambda: False)())

    @_engine_errors_portable
    def wake_up(self) -> bool:
        return bool(getattr(self.engine, "wake_up", lambda: False)())

    def stats(self) -> dict[str, int]:
        """What this worker has sampled so far (requests, completions, tokens), and how many
        engines its process has built (one: an engine is never reloaded)."""
        return {**self.served, "engine_builds": type(self.engine).builds}

    def info(self) -> dict:
        info = {
            "worker_index": self.worker_index,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            # optional dependency: its absence is handled below
            import ray

            info["node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:  # not inside Ray
            info["node_id"] = None
        try:  # the engine's own processes (vLLM's engine core and its workers)
            # optional dependency: its absence is handled below
            import psutil

            info["child_pids"] = [p.pid for p in psutil.Process().children(recursive=True)]
        except Exception:
            info["child_pids"] = []
        return info
