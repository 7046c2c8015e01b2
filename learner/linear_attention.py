"""Which kernels run Qwen3.5's linear-attention (GatedDeltaNet) layers, and the two calls the
shared-prefix forward makes with a state to start from.

Transformers decides the kernels once, when it imports the model's modeling file
(`use_kernel_func_from_hub_with_fallback` in `transformers/integrations/hub_kernels.py`): it
imports `fla` (flash-linear-attention) and takes `fla.ops.gated_delta_rule.
chunk_gated_delta_rule`, and imports `causal_conv1d` and takes its `causal_conv1d_fn`; where an
import fails it keeps its own torch reference (`torch_chunk_gated_delta_rule`: float32, a Python
loop over 64-token chunks; `causal_conv1d_fn`: `F.conv1d`). `kernel_paths` reads that decision
from the wrapped functions themselves (the `implementation` each one closes over), so what it
reports is what runs. The fast kernels need CUDA; on a CPU the torch reference is the only path.

`LinearAttentionKernels` calls them for a sequence that continues a cached state:
- the chunked gated delta rule with `initial_state` (the prompt's recurrent state; both fla and
  the reference take it, and both return its gradient);
- the short causal convolution over the new inputs with the prompt's last `kernel - 1` inputs
  before them: causal-conv1d's `initial_states` argument (channel-last, with its gradient) where
  it runs, else the same inputs prepended and `F.conv1d` without padding (the reference's
  `causal_conv1d_fn` takes no initial state).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

logger = logging.getLogger(__name__)

FAST = {"chunk_gated_delta_rule": "fla", "causal_conv1d": "causal-conv1d"}


def _implementation(wrapped):
    """The function a transformers kernel wrapper dispatches to (itself if it is no wrapper)."""
    closure = getattr(wrapped, "__closure__", None) or ()
    cells = dict(zip(wrapped.__code__.co_freevars, closure, strict=True)) if closure else {}
    cell = cells.get("implementation")
    return cell.cell_contents if cell is not None else wrapped


def _is_fast(wrapped, package: str) -> bool:
    return (getattr(_implementation(wrapped), "__module__", "") or "").startswith(package)


def modeling_module(model):
    """The modeling module of the model's linear-attention layers (None: it has none)."""
    for module in model.modules():
        if hasattr(module, "conv1d") and hasattr(module, "A_log"):  # a GatedDeltaNet
            return sys.modules[type(module).__module__]
    return None


def kernel_paths(model) -> dict[str, str] | None:
    """What runs the model's linear attention, as transformers chose it:
    {"chunk_gated_delta_rule": "fla" | "torch", "causal_conv1d": "causal-conv1d" | "torch"};
    None for a model without linear-attention layers."""
    modeling = modeling_module(model)
    if modeling is None:
        return None
    return {
        "chunk_gated_delta_rule": (
            "fla" if _is_fast(modeling.torch_chunk_gated_delta_rule, "fla") else "torch"
        ),
        "causal_conv1d": (
            "causal-conv1d" if _is_fast(modeling.causal_conv1d_fn, "causal_conv1d") else "torch"
        ),
    }


def report_kernel_paths(model, device: torch.device) -> dict[str, float]:
    """Log which linear-attention path runs (one line), and on cuda with a torch reference one
    warning line; returns the metric for it on cuda (`linear_attention_reference`: 1 where a
    torch reference runs there, 0 where both fast kernels do), nothing elsewhere."""
    paths = kernel_paths(model)
    if paths is None:
        return {}
    text = ", ".join(f"{k}: {v}" for k, v in paths.items())
    logger.info("linear attention runs on %s (%s)", device.type, text)
    if device.type != "cuda":
        return {}
    slow = [k for k, v in paths.items() if v == "torch"]
    if slow:
        logger.warning(
            "the learner runs on cuda with the torch reference for %s (much slower): install "
            "flash-linear-attention and causal-conv1d in the learner's environment (`make "
            "install-cuda-kernels`, docs/gpus-and-engines.md)",
            " and ".join(slow),
        )
    return {"linear_attention_reference": float(bool(slow))}


@dataclass(frozen=True)
class LinearAttentionKernels:
    """The chunked gated delta rule and the causal convolution, each continuing a state.
    `kernels="auto"`: what transformers chose (fast where installed); `"torch"`: the torch
    references whatever is installed (for tests that compare the two)."""

    chunk_rule: object  # (q, k, v, g=, beta=, initial_state=, output_final_state=, ...)
    conv_fn: object | None  # causal_conv1d.causal_conv1d_fn, or None: F.conv1d
    names: tuple[str, str]

    @classmethod
    def for_model(cls, model, kernels: str = "auto") -> LinearAttentionKernels:
        modeling = modeling_module(model)
        rule, conv = modeling.torch_chunk_gated_delta_rule, modeling.causal_conv1d_fn
        if kernels == "torch":
            rule = getattr(rule, "__wrapped__", rule)  # functools.wraps keeps the reference
            return cls(rule, None, ("torch", "torch"))
        if kernels != "auto":
            raise ValueError(f"kernels={kernels!r}: use 'auto' or 'torch'")
        fast_conv = _implementation(conv) if _is_fast(conv, "causal_conv1d") else None
        return cls(
            rule,
            fast_conv,
            (
                "fla" if _is_fast(rule, "fla") else "torch",
                "causal-conv1d" if fast_conv is not None else "torch",
            ),
        )

    def conv(
        self,
        x_BCL: torch.Tensor,
        weight_CK: torch.Tensor,
        bias_C: torch.Tensor | None,
        activation: str,
        initial_BCk: torch.Tensor | None,
    ) -> torch.Tensor:
        """Causal depthwise convolution of `x_BCL` (channels C, length L; kernel K) that sees
        `initial_BCk` (the K - 1 inputs before it; None: zeros), then the activation; (B, C, L)."""
        width = weight_CK.shape[-1]
        if self.conv_fn is not None:  # causal-conv1d: channel-last x and initial states
            x_BCL = x_BCL.transpose(1, 2).contiguous().transpose(1, 2)
            if initial_BCk is not None:
                initial_BCk = initial_BCk.transpose(1, 2).contiguous().transpose(1, 2)
            return self.conv_fn(
                x_BCL, weight_CK, bias_C, initial_states=initial_BCk, activation=activation
            )
        length = x_BCL.shape[-1]
        if initial_BCk is None:
            full_BCL, padding = x_BCL, width - 1
        else:
            full_BCL, padding = torch.cat([initial_BCk.to(x_BCL.dtype), x_BCL], dim=-1), 0
        out_BCL = F.conv1d(
            full_BCL.to(weight_CK.dtype),
            weight_CK.unsqueeze(1),
            bias_C,
            padding=padding,
            groups=full_BCL.shape[1],
        )[:, :, :length]
        if activation is not None:
            out_BCL = ACT2FN[activation](out_BCL)
        return out_BCL.to(x_BCL.dtype)
