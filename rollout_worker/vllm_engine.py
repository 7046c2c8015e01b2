"""vLLM engine: the production rollout engine, on a GPU or on a CPU (vLLM's CPU build).

`LLM` is created once per worker and never reloaded. A new image is just a new PIL image in
`multi_modal_data`; vLLM caches encoder outputs by content hash, so the G samples of a prompt
and all prompts of a step share one encoding. Log-probs of the sampled tokens come back with
`logprobs=0` in `processed_logprobs` mode: after the logit bias that masks the vision tokens
and the temperature (and after top-p/top-k and penalties, which training therefore refuses:
the learner scores the full tempered distribution).

vLLM pins its own torch and transformers, so rollout workers usually run in an environment of
their own (`make install-vllm` builds `.venv-vllm` with vLLM's CPU build; `rollout.python`):
this module imports only vLLM, PIL and `shared`.

Settings every Qwen3.5 engine needs, made here rather than left to the user:
- `gdn_prefill_backend="triton"` by default (through `additional_config`;
  `rollout.gdn_prefill_backend=null` keeps vLLM's choice): on Hopper the linear-attention
  prefill otherwise defaults to FlashInfer, faster, but it needs FlashInfer installed (vLLM's
  CPU build ignores the setting and uses its own kernel);
- `VLLM_USE_FLASHINFER_SAMPLER=0` unless set: without FlashInfer installed the sampler must
  not ask for it (processed log-probs never use it anyway).
On a CPU: `gpu_memory_utilization` would be a fraction of the machine's RAM, so the KV cache
is sized in bytes instead (`kv_cache_memory_bytes`, 1 GiB unless set); eager mode by default
(torch.compile on a CPU costs about 20 s of start-up and buys little for rollouts); vLLM's
OpenMP threads are not pinned to cores (`VLLM_CPU_OMP_THREADS_BIND=nobind` unless set: its
automatic binding puts every engine of a machine on the same core).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from rollout_worker.images import pick_image
from shared.messages import Completion, RolloutRequest, SamplingConfig
from shared.prompts import suppressed_token_ids
from shared.sampling import seed_of

# vLLM finish reasons that mean the completion is whole; anything else is an engine failure.
_FINISHED = {"stop": "stop", "length": "length"}


# On a CPU the KV cache is sized in bytes (gpu_memory_utilization would be a fraction of RAM).
CPU_KV_CACHE_BYTES = 1 << 30


def engine_kwargs(
    model_path: str,
    dtype: str,
    gpu_memory_utilization: float,
    max_model_len: int,
    seed: int,
    enable_lora: bool = False,
    max_lora_rank: int = 16,
    device: str = "cuda",
    kv_cache_memory_bytes: int | None = None,
    enforce_eager: bool | None = None,
    sleep_mode: bool = False,
    gdn_prefill_backend: str | None = "triton",
    image_size: tuple[int, int] | None = None,
    tensor_parallel_size: int = 1,
) -> dict:
    """The `LLM(...)` arguments of a rollout engine."""
    kwargs = {
        "model": model_path,
        "dtype": dtype,
        "max_model_len": max_model_len,
        # one image of the training size: vLLM profiles and budgets its encoder for that
        # size instead of the processor's largest (16,384 image tokens for Qwen3.5)
        "limit_mm_per_prompt": {
            "image": {"count": 1, "width": image_size[1], "height": image_size[0]}
            if image_size
            else 1,
            "video": 0,
        },
        "logprobs_mode": "processed_logprobs",
        "seed": seed,
        "enforce_eager": device == "cpu" if enforce_eager is None else enforce_eager,
    }
    if gdn_prefill_backend:
        kwargs["additional_config"] = {"gdn_prefill_backend": gdn_prefill_backend}
    if device == "cpu" and kv_cache_memory_bytes is None:
        kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
    if kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    if sleep_mode:
        kwargs["enable_sleep_mode"] = True
    if tensor_parallel_size > 1:
        # vLLM's own worker processes on the GPUs Ray gave this actor (all of them, one node):
        # "mp", not vLLM's Ray executor, which inside a placement group would try to reserve
        # one-GPU bundles of its own (verl does the same)
        kwargs.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
    return kwargs


# The ranks vLLM accepts for `max_lora_rank`.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(
        f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}"
    )


def write_peft_folder(folder: Path, config: dict, weights: bytes) -> None:
    """A standard PEFT adapter folder: adapter_config.json + adapter_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (folder / "adapter_model.safetensors").write_bytes(weights)


def _shm() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def sampling_kwargs(request: RolloutRequest, sampling: SamplingConfig, suppress: dict) -> dict:
    """The `SamplingParams(...)` of one request (pure: tested without vLLM).

    Vision tokens are masked with a logit bias of -inf on their few ids: O(suppressed tokens)
    per request, where `allowed_token_ids` would ship the whole 248k vocabulary each time.
    """
    return {
        "n": request.n,
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "top_p": 1.0 if sampling.greedy else sampling.top_p,
        "top_k": -1,
        "presence_penalty": sampling.presence_penalty,
        "max_tokens": sampling.max_new_tokens,
        "logprobs": 0,
        "logit_bias": dict(suppress),
        "seed": seed_of(request, sampling),
        "skip_special_tokens": True,
    }


def import_vllm():
    """`vllm.LLM`, or an error that says which interpreter lacks vLLM and how to get it."""

    try:
        # optional: vLLM exists only in the rollout workers' environment
        from vllm import LLM
    except ImportError as err:
        raise ImportError(
            f"rollout.engine=vllm: this rollout worker's Python ({sys.executable}) cannot import "
            f"vLLM ({err}). On a CPU machine run `make install-vllm` (it builds .venv-vllm, "
            "which rollout.python=auto finds); on a GPU machine the environment of "
            "deploy/vllm/requirements-gpu.txt (docs/gpus-and-engines.md); or set "
            "rollout.python to an interpreter that has vLLM"
        ) from err
    return LLM


def check_platform(device: str) -> None:
    """vLLM's build must be the one the worker was placed for: its CPU build reads
    gpu_memory_utilization as a fraction of RAM, its GPU build takes a GPU Ray did not give."""
    # optional: vLLM exists only in the rollout workers' environment
    from vllm.platforms import current_platform

    if current_platform.is_cpu() != (device == "cpu"):
        build = "CPU" if current_platform.is_cpu() else "GPU"
        raise RuntimeError(
            f"this worker's vLLM is the {build} build but the worker was placed for {device} "
            "(rollout.num_gpus_per_worker): use a vLLM environment of the other build "
            "(rollout.python), or set rollout.num_gpus_per_worker to match"
        )


class VLLMEngine:
    # Engines built in this process (a worker builds one and never reloads it).
    builds = 0

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        seed: int = 0,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        device: str = "cuda",
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
        sleep_mode: bool = False,
        gdn_prefill_backend: str | None = "triton",
        seeded: bool = True,
        image_size: tuple[int, int] | None = None,
        tensor_parallel_size: int = 1,
        **_,
    ):
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        LLM = import_vllm()
        check_platform(device)
        self.kwargs = engine_kwargs(
            model_path,
            dtype,
            gpu_memory_utilization,
            max_model_len,
            seed,
            enable_lora,
            vllm_lora_rank(max_lora_rank) if enable_lora else 0,
            device,
            kv_cache_memory_bytes,
            enforce_eager,
            bool(sleep_mode),
            gdn_prefill_backend,
            tuple(image_size) if image_size else None,
            tensor_parallel_size,
        )
        self.sleeping, self.seeded = False, seeded
        self.llm = LLM(**self.kwargs)
        VLLMEngine.builds += 1
        self.tokenizer = self.llm.get_tokenizer()
        self.suppress = {i: float("-inf") for i in suppressed_token_ids(self.tokenizer)}
        self.lora_request = None
        self.adapter_dir = Path(tempfile.mkdtemp(prefix="art-lora-", dir=_shm()))

    def set_adapter(self, version: int, config: dict, weights: bytes) -> None:
        """A new adapter version: written as a PEFT folder and loaded as a new `LoRARequest`
        (a new integer id per version, so vLLM loads it; the base model is never reloaded)."""
        # optional: vLLM exists only in the rollout workers' environment
        from vllm.lora.request import LoRARequest

        folder = self.adapter_dir / f"v{version}"
        write_peft_folder(folder, config, weights)
        previous = self.lora_request
        self.lora_request = LoRARequest(f"art-v{version}", version + 1, str(folder))
        if previous is not None and previous.lora_path != str(folder):  # a resend keeps it
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def clear_adapter(self) -> None:
        self.lora_request = None

    def sleep(self) -> bool:
        """Free the GPU for the learner's update (sleep mode only): level 1 drops the KV cache
        and moves the weights to host memory; `wake_up` restores them (they never change)."""
        if not self.kwargs.get("enable_sleep_mode") or self.sleeping:
            return False
        self.llm.sleep(level=1)
        self.sleeping = True
        return True

    def wake_up(self) -> bool:
        if not self.sleeping:
            return False
        self.llm.wake_up()
        self.sleeping = False
        return True

    def generate(
        self,
        requests: list[RolloutRequest],
        image: Image.Image,
        image_version: int,
        sampling: SamplingConfig,
        images: dict | None = None,
    ) -> list[list[Completion]]:
        """`images`: {image_key: (image, version)} of a multi-task batch (each request names its
        own); `image` and `image_version` serve requests of key "" (one task)."""
        # optional: vLLM exists only in the rollout workers' environment
        from vllm import SamplingParams

        if self.sleeping:  # the driver owns sleep and wake-up (the learner may hold the GPU)
            raise RuntimeError("the vLLM engine is asleep: call wake_up before generate")
        prompts, params, versions = [], [], []
        for request in requests:
            own, version = pick_image(request, image, image_version, images)
            versions.append(version)
            prompt = {"prompt": request.prompt}
            if request.with_image:
                prompt["multi_modal_data"] = {"image": own}
            prompts.append(prompt)
            kwargs = sampling_kwargs(request, sampling, self.suppress)
            if not self.seeded:  # vLLM's engine seed only: its faster batched sampling path
                kwargs["seed"] = None
            params.append(SamplingParams(**kwargs))
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        results = []
        for request, output, version in zip(requests, outputs, versions, strict=True):
            group = []
            for sample in output.outputs:
                if sample.finish_reason not in _FINISHED:
                    raise RuntimeError(
                        f"vLLM finished request {request.request_id} with "
                        f"{sample.finish_reason!r}: the completion is not usable"
                    )
                token_ids = tuple(sample.token_ids)
                logprobs = tuple(
                    step[token].logprob
                    for step, token in zip(sample.logprobs, token_ids, strict=True)
                )
                group.append(
                    Completion(
                        request_id=request.request_id,
                        token_ids=token_ids,
                        logprobs=logprobs,
                        finish_reason=_FINISHED[sample.finish_reason],
                        text=sample.text,
                        image_version=version,
                        prompt_token_ids=tuple(output.prompt_token_ids),
                    )
                )
            results.append(group)
        return results
