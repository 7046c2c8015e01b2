"""Differentiable reimplementation of `Qwen2VLImageProcessor` for an image that needs no resize.

The HF processor does: rescale (1/255), normalize with its mean/std, duplicate the frame along
the temporal axis, and cut patches in a merge-window-major order; `image_grid_thw` is
(1, H/patch, W/patch). Sizes it would resize are refused up front, so rollouts (which go
through the real processor, or vLLM's copy of it) and the learner see identical inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.errors import UserError


class ImageSizeError(UserError):
    """An image size the model's processor would resize."""


@dataclass(frozen=True)
class VisionSpec:
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_image_processor(cls, image_processor) -> VisionSpec:
        size = image_processor.size
        min_pixels = size.get("shortest_edge") if hasattr(size, "get") else size.shortest_edge
        max_pixels = size.get("longest_edge") if hasattr(size, "get") else size.longest_edge
        return cls(
            patch_size=int(image_processor.patch_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
            merge_size=int(image_processor.merge_size),
            image_mean=tuple(float(v) for v in image_processor.image_mean),
            image_std=tuple(float(v) for v in image_processor.image_std),
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
        )

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def num_image_tokens(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size) // self.merge_size**2

    def valid_square_sizes(self, limit: int = 6) -> list[int]:
        lo = max(1, math.ceil(math.sqrt(self.min_pixels) / self.factor))
        hi = math.floor(math.sqrt(self.max_pixels) / self.factor)
        return [k * self.factor for k in range(lo, min(hi, lo + limit - 1) + 1)]


def validate_image_size(height: int, width: int, spec: VisionSpec, model_name: str = "") -> None:
    """Refuse sizes the processor would resize, naming sizes that work."""
    where = f" for {model_name}" if model_name else ""
    valid = ", ".join(str(s) for s in spec.valid_square_sizes())
    hint = f"; square sizes that work{where}: {valid}"
    for name, value in (("height", height), ("width", width)):
        if value % spec.factor:
            raise ImageSizeError(
                f"image {name} {value} is not a multiple of {spec.factor} "
                f"(patch {spec.patch_size} x merge {spec.merge_size}){where}{hint}"
            )
    if not spec.min_pixels <= height * width <= spec.max_pixels:
        raise ImageSizeError(
            f"image size {height}x{width} = {height * width} pixels is outside the image "
            f"processor's range [{spec.min_pixels}, {spec.max_pixels}]{where}, so it would be "
            f"resized{hint}"
        )


def preprocess(pixels_CHW: torch.Tensor, spec: VisionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0, 1] (3, H, W) -> (patches (N, C*T*P*P), image_grid_thw (1, 3))."""
    channels, height, width = pixels_CHW.shape
    validate_image_size(height, width, spec)
    like = {"dtype": pixels_CHW.dtype, "device": pixels_CHW.device}
    mean_C11 = torch.tensor(spec.image_mean, **like).view(-1, 1, 1)
    std_C11 = torch.tensor(spec.image_std, **like).view(-1, 1, 1)
    normed_CHW = (pixels_CHW - mean_C11) / std_C11

    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    patches = normed_CHW.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    # (gh/m, gw/m, m, m, C, p, p): merge windows row-major, then patches inside each window.
    patches = patches.permute(1, 4, 2, 5, 0, 3, 6)
    patches = patches.unsqueeze(5).expand(-1, -1, -1, -1, -1, t, -1, -1)
    patches_NP = patches.reshape(grid_h * grid_w, channels * t * p * p)
    grid_thw = torch.tensor([[1, grid_h, grid_w]], dtype=torch.long)
    return patches_NP, grid_thw
