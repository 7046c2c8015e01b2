"""Rollout engines as a registry (verl's rollout registry with a base class): an engine's spec
says everything the driver needs to know of it: its config rules, its constructor's options,
the interpreter its workers run in (`rollout.python=auto`), and its class by import path, which
the rollout worker builds (`rollout_worker/engine.py`). Light on purpose: the driver and the
config check read it without importing the engine (vLLM lives in another environment).

Adding an engine: its class in `rollout_worker/` (the `Engine` protocol of
`rollout_worker/engine.py`), a spec here and one line in `ENGINES` (docs/design.md, "Adding
...").
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

from shared.errors import UserError

logger = logging.getLogger("art.cluster")
REPO = Path(__file__).resolve().parents[1]
# Where `make install-vllm` builds the rollout workers' vLLM environment.
VLLM_VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


class EngineSpec:
    name = ""
    engine_class = ""  # "package.module:Class", built by the rollout worker

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        """(holds, what to set) for every rule of this engine."""
        return []

    def options(self, cfg: Any, device: str, lora_rank: int | None = None) -> dict:
        """The engine constructor's keyword arguments (besides the model's path)."""
        return {"dtype": cfg.rollout.dtype, "device": device}

    def python(self, cfg: Any) -> str | None:
        """The workers' interpreter under `rollout.python=auto`: None for the driver's own."""
        return None


class HFEngineSpec(EngineSpec):
    """Hugging Face `generate` on one device: the engine on CPUs and in tests."""

    name = "hf"
    engine_class = "rollout_worker.hf_engine:HFEngine"

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        tp = cfg.rollout.tensor_parallel_size
        return [
            (
                tp == 1,
                f"rollout.tensor_parallel_size={tp} needs rollout=vllm (the HF engine runs on one device)",
            )  # fmt: skip
        ]


class VLLMEngineSpec(EngineSpec):
    """vLLM, the production engine: on GPUs, or vLLM's CPU build (`make install-vllm`)."""

    name = "vllm"
    engine_class = "rollout_worker.vllm_engine:VLLMEngine"

    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        rank, temperature = cfg.method.lora.rank, cfg.algo.temperature
        return [
            (
                cfg.method.name != "lora" or rank <= 512,
                f"method.lora.rank={rank}: vLLM serves LoRA ranks up to 512",
            ),
            (
                temperature <= 2.0,
                f"algo.temperature={temperature}: vLLM samples at temperatures up to 2",
            ),
        ]

    def options(self, cfg: Any, device: str, lora_rank: int | None = None) -> dict:
        rollout = cfg.rollout
        options = super().options(cfg, device, lora_rank)
        options.update(
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            kv_cache_memory_bytes=rollout.kv_cache_memory_bytes,
            enforce_eager=rollout.enforce_eager,
            max_model_len=rollout.max_model_len,
            seed=cfg.seed,
            enable_lora=cfg.method.name == "lora" or lora_rank is not None,
            max_lora_rank=lora_rank or cfg.method.lora.rank,
            sleep_mode=bool(rollout.sleep_mode),
            gdn_prefill_backend=rollout.gdn_prefill_backend,
            seeded=rollout.seeded,
            image_size=(cfg.image.height, cfg.image.width),
        )
        if rollout.tensor_parallel_size > 1:
            options["tensor_parallel_size"] = rollout.tensor_parallel_size
        return options

    def python(self, cfg: Any) -> str | None:
        """$ART_VLLM_PYTHON, else this checkout's .venv-vllm, else the driver's own (which must
        have vLLM when the run is local)."""
        if os.environ.get("ART_VLLM_PYTHON"):
            return os.environ["ART_VLLM_PYTHON"]
        if VLLM_VENV_PYTHON.exists():
            return str(VLLM_VENV_PYTHON)
        if cfg.cluster.address:
            logger.warning(
                "rollout.engine=vllm: neither ART_VLLM_PYTHON nor .venv-vllm here; the workers "
                "use the driver's interpreter (%s), which must have vLLM on every node",
                sys.executable,
            )
        elif importlib.util.find_spec("vllm") is None:
            raise UserError(
                "rollout.engine=vllm needs vLLM, and neither .venv-vllm nor this Python has it: "
                "run `make install-vllm` (vLLM's CPU build, in its own environment) or, on a GPU "
                "machine, the environment of deploy/vllm/requirements-gpu.txt "
                "(docs/gpus-and-engines.md); or set rollout.python=<python with vLLM>"
            )
        return None


ENGINES: dict[str, EngineSpec] = {"hf": HFEngineSpec(), "vllm": VLLMEngineSpec()}


def engine_spec(name: str) -> EngineSpec:
    if name not in ENGINES:
        choices = " or ".join(repr(n) for n in ENGINES)
        raise UserError(f"rollout.engine={name!r}: use {choices}")
    return ENGINES[name]


def engine_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The configured engine's rules (or the one that says it does not exist)."""
    try:
        return engine_spec(cfg.rollout.engine).rules(cfg)
    except UserError as err:
        return [(False, str(err))]
