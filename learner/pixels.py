"""The one trainable tensor: the image's pixel logits.

`theta_CHW` is float32; pixels are `sigmoid(theta)`. Rollout engines see a PNG (uint8), so the
learner sees exactly the same values through a straight-through quantizer: forward uses
`round(255 x) / 255`, backward passes the gradient of `x` unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.artifact import encode_png

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
