"""ART's one trainable tensor: the image's pixel logits (and `TrainedPixels`, what the learner
trains under `method=art`).

`theta_CHW` is float32; pixels are `sigmoid(theta)`. Rollout engines see a PNG (uint8), so the
learner sees exactly the same values through a straight-through quantizer: forward uses
`round(255 x) / 255`, backward passes the gradient of `x` unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from learner.policy import EncodedImage
from shared.artifact import encode_png
from shared.messages import ImageUpdate

_EPS = 1.0 / 512.0


def quantize_ste(pixels_CHW: torch.Tensor) -> torch.Tensor:
    """Straight-through uint8 quantization: forward rounds to k/255, gradient is identity."""
    return pixels_CHW + (torch.round(pixels_CHW * 255.0) / 255.0 - pixels_CHW).detach()


class PixelImage(nn.Module):
    """theta (3, H, W) -> pixels in [0, 1] -> quantized pixels -> PNG."""

    def __init__(self, theta_CHW: torch.Tensor):
        super().__init__()
        if theta_CHW.ndim != 3 or theta_CHW.shape[0] != 3:
            raise ValueError(f"theta must have shape (3, H, W), got {tuple(theta_CHW.shape)}")
        self.theta_CHW = nn.Parameter(theta_CHW.detach().to(torch.float32).clone())

    @classmethod
    def from_uint8(cls, pixels_HWC: np.ndarray) -> PixelImage:
        x_CHW = torch.from_numpy(pixels_HWC.astype(np.float32) / 255.0).permute(2, 0, 1)
        return cls(torch.logit(x_CHW.clamp(_EPS, 1.0 - _EPS)))

    @classmethod
    def gray(cls, height: int, width: int) -> PixelImage:
        return cls(torch.zeros(3, height, width))

    @classmethod
    def noise(cls, height: int, width: int, seed: int = 0) -> PixelImage:
        gen = torch.Generator().manual_seed(seed)
        x_CHW = torch.rand(3, height, width, generator=gen)
        return cls(torch.logit(x_CHW.clamp(_EPS, 1.0 - _EPS)))

    @property
    def size(self) -> tuple[int, int]:
        return int(self.theta_CHW.shape[1]), int(self.theta_CHW.shape[2])

    def pixels(self) -> torch.Tensor:
        """Continuous pixels in [0, 1], shape (3, H, W)."""
        return torch.sigmoid(self.theta_CHW)

    def forward(self) -> torch.Tensor:
        """Quantized pixels (values k/255) with a straight-through gradient, shape (3, H, W)."""
        return quantize_ste(self.pixels())

    @torch.no_grad()
    def to_uint8(self) -> np.ndarray:
        """The image as the engines see it: uint8 (H, W, 3)."""
        u8_CHW = torch.round(self.pixels() * 255.0).to(torch.uint8)
        return u8_CHW.permute(1, 2, 0).contiguous().cpu().numpy()

    def to_png(self, metadata: dict[str, object] | None = None) -> bytes:
        return encode_png(self.to_uint8(), metadata)


class TrainedPixels:
    """ART's trained policy: the pixel logits of the one image (the `Trained` interface of
    `learner/trained.py`). The image's features enter the frozen model's forward as a float32
    leaf that every micro-batch's backward accumulates into; one backward through the vision
    tower then carries that sum to the pixels."""

    method = "art"
    with_image = True
    deterministic_forward = True  # the gradient forward is the policy's own

    def __init__(self, image: PixelImage):
        self.image = image
        self.seed_uint8 = image.to_uint8()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.image.parameters())

    def encode(self, policy, grad: bool):
        with torch.set_grad_enabled(grad):
            return policy.encode_image(self.image())

    @contextmanager
    def gradient_pass(self, policy):

        encoded = self.encode(policy, grad=True)
        # float32 whatever the model's dtype: micro-batch gradients accumulate in float32
        leaf_ND = encoded.features_ND.detach().float().requires_grad_(True)
        yield EncodedImage(leaf_ND, encoded.grid_thw)
        if leaf_ND.grad is not None:  # one vision backward for the whole minibatch
            encoded.features_ND.backward(leaf_ND.grad.to(encoded.features_ND.dtype))

    def policy_update(self, version: int, metadata: dict):

        return ImageUpdate(version=version, png=self.image.to_png(metadata))

    def update_metrics(self, update) -> dict[str, float]:
        return {
            "pixel_distance": self.pixel_distance_from_seed(),
            "png_bytes": float(len(update.png)),
        }

    def pixel_distance_from_seed(self) -> float:
        """Mean absolute uint8 difference to the seed image, in [0, 255]."""
        diff = self.image.to_uint8().astype(np.int16) - self.seed_uint8.astype(np.int16)
        return float(np.abs(diff).mean())

    def state_dict(self) -> dict:
        return image_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_image_state(self, state)


def image_state(trained) -> dict:
    """The image part of a learner checkpoint (both methods carry their image)."""
    return {
        "theta_CHW": trained.image.theta_CHW.detach().cpu().clone(),
        "seed_uint8_HWC": torch.from_numpy(trained.seed_uint8.copy()),
    }


def load_image_state(trained, state: dict) -> None:
    with torch.no_grad():
        trained.image.theta_CHW.copy_(state["theta_CHW"].to(trained.image.theta_CHW.device))
    trained.seed_uint8 = state["seed_uint8_HWC"].numpy().copy()
