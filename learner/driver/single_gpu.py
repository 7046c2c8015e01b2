"""One GPU for everything (`cluster=single_gpu`): the learner and one vLLM rollout worker share
a GPU through fractional Ray GPUs (0.5 each: Ray gives both the same device).

The memory model, in bytes, with W = the bfloat16 weights (2 x `model.num_parameters`):
- learner = W + 1.5 GiB (CUDA context, allocator slack, the image and its Adam state)
  + `model.learner_bytes_per_token` x the tokens of one micro-batch (activations with
  activation checkpointing: the stored layer inputs, one layer recomputed, one logits chunk);
- vLLM = W + its KV cache and activations; it needs at least W + 6 GiB
  (`VLLM_MIN_EXTRA`: its profile run, sampler and CUDA graphs, a useful KV cache) and gets
  `rollout.gpu_memory_utilization` x the GPU.
Without sleep mode both are resident at once: learner + vLLM <= 95% of the GPU. With vLLM's
sleep mode (`rollout.sleep_mode`) the engine drops its KV cache and moves its weights to host
memory during the update (the ART image never changes the weights: wake-up restores them), so
the learner's activations may use vLLM's share then: the learner's static part + vLLM <= 95%
while sampling, the learner + 3 GiB left by a sleeping engine (its CUDA context and graphs)
<= 95% while updating. The activations are planned for max(token budget, the longest
sequence: rollout.max_model_len), since a longer sequence gets a pass of its own.
`plan()` picks vLLM's fraction and the learner's token budget, or refuses with what to set.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from shared.errors import UserError

GIB = 1 << 30
LEARNER_STATIC_EXTRA = 1.5 * GIB
# vLLM's non-KV footprint beyond its weights on a GPU (the profile run over its batched-token
# budget, the sampler's logits, CUDA graphs) plus a useful KV cache.
VLLM_MIN_EXTRA = 6 * GIB
# What an engine asleep at level 1 still holds: its CUDA context, CUDA-graph pools, workspaces
# (only the weights and the KV cache are released).
SLEEPING_ENGINE = 3 * GIB
USABLE = 0.95


class SingleGpuError(UserError):
    """The model and settings cannot share the GPU; the message says what to set."""


@dataclass(frozen=True)
class Plan:
    total_bytes: int
    weights_bytes: int
    learner_bytes: int  # static + the micro-batch's activations
    vllm_fraction: float
    tokens_per_micro_batch: int
    sleep_mode: bool

    def describe(self) -> str:
        return (
            f"one GPU of {self.total_bytes / GIB:.1f} GiB: vLLM {self.vllm_fraction:.2f} of it "
            f"({self.vllm_fraction * self.total_bytes / GIB:.1f} GiB), the learner "
            f"{self.learner_bytes / GIB:.1f} GiB (weights {self.weights_bytes / GIB:.1f} GiB, "
            f"{self.tokens_per_micro_batch} tokens per micro-batch), sleep mode "
            f"{'on' if self.sleep_mode else 'off'}"
        )


def plan(
    total_bytes: int,
    num_parameters: int,
    bytes_per_token: float,
    tokens: int | None,
    sleep_mode: bool | None,
    max_sequence: int = 4096,
    max_tokens: int = 32 * 4096,
) -> Plan:
    """vLLM's fraction and the learner's token budget for one GPU (see the module docstring).
    `tokens=None` takes the largest budget that fits, at most `max_tokens` (what one pass can
    hold: micro-batch size x the longest sequence); the activations are planned for at least
    `max_sequence` tokens (the longest sequence gets a pass of its own); `sleep_mode=None`
    turns it on only when the two do not fit side by side."""
    weights = 2 * num_parameters
    usable = USABLE * total_bytes
    static = weights + LEARNER_STATIC_EXTRA
    vllm_min = weights + VLLM_MIN_EXTRA
    if static + vllm_min > usable:
        raise SingleGpuError(
            f"the model's weights ({weights / GIB:.1f} GiB in bfloat16) twice, plus "
            f"{(LEARNER_STATIC_EXTRA + VLLM_MIN_EXTRA) / GIB:.1f} GiB, do not fit in "
            f"{USABLE:.0%} of this GPU ({total_bytes / GIB:.1f} GiB): use two GPUs "
            "(cluster=multi_gpu) or a smaller model"
        )
    for sleep in [sleep_mode] if sleep_mode is not None else [False, True]:
        # while updating, the learner may use what a sleeping engine gives back
        room = usable - static - (SLEEPING_ENGINE if sleep else vllm_min)
        budget = min(int(room // bytes_per_token), max_tokens) if tokens is None else tokens
        planned = max(budget, max_sequence)  # a longer sequence gets a pass of its own
        if budget >= 1 and planned * bytes_per_token <= room:
            learner = static + planned * bytes_per_token
            vllm = usable - static if sleep else usable - learner
            return Plan(total_bytes, weights, int(learner), vllm / total_bytes, budget, sleep)
    planned = max(tokens or max_sequence, max_sequence)
    raise SingleGpuError(
        f"on one GPU of {total_bytes / GIB:.1f} GiB the learner's micro-batch of {planned} "
        f"tokens ({planned * bytes_per_token / GIB:.1f} GiB of activations) does not fit beside "
        "vLLM: lower learner.max_tokens_per_micro_batch and rollout.max_model_len, set "
        "rollout.sleep_mode=true (with algo.max_staleness=0), or use two GPUs (cluster=multi_gpu)"
    )


def gpu_memory_bytes(configured_gib: float | None) -> int:
    """The GPU's memory: `cluster.gpu_memory_gib`, else what nvidia-smi reports for GPU 0 (no
    CUDA context in the driver: it would take memory on the GPU it measures)."""
    if configured_gib:
        return int(configured_gib * GIB)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        return int(float(out.splitlines()[0]) * (1 << 20))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        raise SingleGpuError(
            f"cluster=single_gpu needs a GPU: nvidia-smi did not report one ({err}); set "
            "cluster.gpu_memory_gib=<GiB> if the GPU is there, or use a CPU setup"
        ) from err


def apply_plan(cfg) -> Plan:
    """The plan for `cfg` written into it: vLLM's fraction, sleep mode, the token budget."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import open_dict

    sleep_mode = cfg.rollout.sleep_mode
    if sleep_mode is None and cfg.algo.max_staleness:  # sampling goes on during the update
        sleep_mode = False
    chosen = plan(
        gpu_memory_bytes(cfg.cluster.gpu_memory_gib),
        cfg.model.num_parameters,
        cfg.model.learner_bytes_per_token,
        cfg.learner.max_tokens_per_micro_batch,
        sleep_mode,
        max_sequence=cfg.rollout.max_model_len,
        max_tokens=cfg.learner.micro_batch_size * cfg.rollout.max_model_len,
    )
    with open_dict(cfg):
        cfg.rollout.gpu_memory_utilization = round(chosen.vllm_fraction, 4)
        cfg.rollout.sleep_mode = chosen.sleep_mode
        cfg.learner.max_tokens_per_micro_batch = chosen.tokens_per_micro_batch
    return chosen
