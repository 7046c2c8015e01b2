"""What the learner trains, behind one small interface: ART's pixels (`learner/pixels.py`,
`TrainedPixels`) or the LoRA baseline's adapter (`learner/lora.py`, `TrainedLora`).

The DAPO update loop, the version history and the non-finite guard (`learner/learner.py`) only
ever talk to a `Trained`:
- `parameters()`: the tensors the optimizer moves;
- `encode(policy, grad)`: the image features the frozen model's forward gets (None: a
  text-only prompt), for no-gradient passes;
- `gradient_pass(policy)`: a context for one minibatch's forward/backward; it yields those
  features and, on exit, finishes the backward (ART: one backward through the vision tower);
- `policy_update(version, metadata)`: the message the rollout workers need (a PNG or an
  adapter), and `update_metrics(update)` its figures;
- `image`, `with_image`: the image in the prompts (trained, or the fixed seed);
- `deterministic_forward`: whether the gradient forward is the policy's own (LoRA dropout
  is not), so that the first minibatch's forward may double as its old log-probs;
- `state_dict()` / `load_state_dict(state)`: its part of a checkpoint.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import torch

from learner.lora import TrainedLora
from learner.pixels import TrainedPixels


class Trained(Protocol):
    method: str
    with_image: bool
    # whether the gradient forward computes the policy's own log-probs (no dropout): then the
    # first minibatch's forward doubles as its old log-probs
    deterministic_forward: bool

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def encode(self, policy, grad: bool): ...

    def gradient_pass(self, policy) -> AbstractContextManager: ...

    def policy_update(self, version: int, metadata: dict): ...

    def update_metrics(self, update) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def make_trained(method: str, model, image, model_name: str, lora: dict | None, with_image: bool):
    """The trained policy of `method` ("art" or "lora") around the loaded frozen model."""
    match method:
        case "art":
            return TrainedPixels(image)
        case "lora":
            return TrainedLora(model, image, model_name, with_image, **dict(lora or {}))
        case _:
            raise ValueError(f"unknown method {method!r}; use 'art' or 'lora'")
