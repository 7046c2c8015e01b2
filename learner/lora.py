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
import warnings
from contextlib import contextmanager

import torch

from learner.pixels import image_state, load_image_state
from shared.messages import AdapterUpdate


def attach_lora(model, rank: int, alpha: float, dropout: float, target_modules, model_name: str):
    """Inject a LoRA adapter into `model` in place; returns the PEFT model. Only the adapter's
    parameters require gradients."""

    # start-up time: a heavy library, loaded when this runs
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
    for name, module in peft_model.named_modules():  # see TrainedLora.dropout
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
    # start-up time: a heavy library, loaded when this runs
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()
    }


def adapter_bytes(peft_model) -> bytes:
    # start-up time: a heavy library, loaded when this runs
    from safetensors.torch import save

    return save(adapter_state(peft_model))


def adapter_config(peft_model) -> dict:
    """`adapter_config.json` as a plain dict (sets become sorted lists)."""
    raw = peft_model.peft_config["default"].to_dict()
    return json.loads(
        json.dumps(raw, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


class TrainedLora:
    """The baseline's trained policy (`method=lora`; the `Trained` interface of
    `learner/trained.py`): a LoRA adapter injected into the frozen model; the image stays the
    seed (in the prompts with `with_image`, else prompts are text-only)."""

    method = "lora"

    def __init__(self, model, image, model_name: str, with_image: bool = False, **settings):
        self.peft_model = attach_lora(model, model_name=model_name, **settings)
        self.model_name = model_name
        self.image, self.with_image = image, with_image
        self.seed_uint8 = image.to_uint8()
        image.theta_CHW.requires_grad_(False)
        self._seed_features = None
        # with dropout the gradient forward is not the policy's own (no reuse as old log-probs)
        self.deterministic_forward = float(settings.get("dropout", 0.0)) == 0.0

    def parameters(self) -> list[torch.nn.Parameter]:
        return adapter_parameters(self.peft_model)

    def encode(self, policy, grad: bool):
        """The fixed seed image's features (encoded once), or None for text-only prompts."""
        if not self.with_image:
            return None
        if self._seed_features is None:
            with torch.no_grad():
                self._seed_features = policy.encode_image(self.image())
        return self._seed_features

    @contextmanager
    def gradient_pass(self, policy):
        """Micro-batch backwards go straight into the adapter; its dropout acts only here."""
        self.dropout(True)
        try:
            yield self.encode(policy, grad=False)
        finally:
            self.dropout(False)

    def dropout(self, active: bool) -> None:
        """LoRA dropout (`method.lora.dropout`) acts in the gradient forward only: never in
        old log-prob passes, nor in the rollout engines."""
        for name, module in self.peft_model.named_modules():
            if name.endswith("lora_dropout.default"):
                module.train(active)

    def policy_update(self, version: int, metadata: dict):

        config = adapter_config(self.peft_model)
        config["base_model_name_or_path"] = self.model_name
        return AdapterUpdate(version, adapter_bytes(self.peft_model), config)

    def update_metrics(self, update) -> dict[str, float]:
        return {"adapter_bytes": float(len(update.weights))}

    def state_dict(self) -> dict:

        return {
            **image_state(self),
            "adapter": [p.detach().cpu().clone() for p in self.parameters()],
        }

    def load_state_dict(self, state: dict) -> None:
        """The adapter's tensors in order, refused when their count or shapes differ (another
        rank or other target modules than this run's)."""

        params, saved = self.parameters(), state["adapter"]
        shapes = [tuple(p.shape) for p in params], [tuple(t.shape) for t in saved]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"the checkpoint's adapter has {len(saved)} tensors of shapes {shapes[1][:4]}..., "
                f"this run's {len(params)} of {shapes[0][:4]}...: resume with the run's own "
                "method.lora settings (rank, target_modules)"
            )
        load_image_state(self, state)
        with torch.no_grad():
            for param, tensor in zip(params, saved, strict=True):
                param.copy_(tensor.to(param.device))
