"""The LoRA baseline (`method=lora`): a PEFT LoRA adapter on the language model, trained by the
same DAPO loop as the pixels, for the paper's comparison.

The defaults (`method.lora` in `shared/config.py`) follow common practice for RL with PEFT:
rank 16, alpha 32, no dropout (dropout would make the learner's log-probs noisy against the
rollout engine's), on the attention and MLP projections of the language model (`q_proj k_proj
v_proj o_proj gate_proj up_proj down_proj`: names that only the language model's layers carry
in Qwen3.5; the vision tower stays as it is). The base weights stay frozen.
"""

from __future__ import annotations

import json

import torch


def attach_lora(model, rank: int, alpha: float, dropout: float, target_modules, model_name: str):
    """Inject a LoRA adapter into `model` in place; returns the PEFT model. Only the adapter's
    parameters require gradients."""
    import warnings

    from peft import LoraConfig, get_peft_model

    # PEFT notes that base_model_name_or_path became the local path, and asks transformers a
    # deprecated question; neither matters here.
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        base_model_name_or_path=model_name,
    )
    peft_model = get_peft_model(model, config)
    for name, module in peft_model.named_modules():  # see Learner._lora_dropout
        if "lora_dropout" in name:
            module.eval()
    for name, param in peft_model.named_parameters():
        param.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(
            f"no module of the model matches method.lora.target_modules={target_modules}"
        )
    return peft_model


def adapter_parameters(peft_model) -> list[torch.nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n]


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT's key names (those of `adapter_model.safetensors`)."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()
    }


def adapter_bytes(peft_model) -> bytes:
    from safetensors.torch import save

    return save(adapter_state(peft_model))


def adapter_config(peft_model) -> dict:
    """`adapter_config.json` as a plain dict (sets become sorted lists)."""
    raw = peft_model.peft_config["default"].to_dict()
    return json.loads(
        json.dumps(raw, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


def load_adapter_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter weights that fit no module: {unexpected[:3]}")
