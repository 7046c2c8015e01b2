import numpy as np
import pytest
import torch
from PIL import Image

from learner.preprocess import VisionSpec, preprocess, validate_image_size


@pytest.fixture(scope="module")
def spec(tiny_processor):
    return VisionSpec.from_image_processor(tiny_processor.image_processor)


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_hf_image_processor(tiny_processor, spec, size, seed):
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    ref = tiny_processor.image_processor(images=[Image.fromarray(u8)], return_tensors="pt")
    pixels_CHW = torch.from_numpy(u8).permute(2, 0, 1).float() / 255.0
    patches, grid = preprocess(pixels_CHW, spec)
    assert patches.shape == ref["pixel_values"].shape
    assert (patches - ref["pixel_values"]).abs().max().item() <= 1e-5
    assert torch.equal(grid, ref["image_grid_thw"])


def test_gradient_reaches_the_pixels(spec):
    pixels = torch.rand(3, 64, 64, requires_grad=True)
    patches, _ = preprocess(pixels, spec)
    patches.square().sum().backward()
    assert pixels.grad.abs().min() > 0


def test_sizes_the_processor_would_resize_are_refused(spec):
    with pytest.raises(ValueError, match=r"not a multiple of 32 \(patch 16 x merge 2\).*64, 96"):
        validate_image_size(250, 256, spec, "tiny")
    with pytest.raises(ValueError, match="outside the image processor's range"):
        validate_image_size(1024, 1024, spec, "tiny")
    validate_image_size(64, 64, spec, "tiny")


def test_min_pixels_of_a_qwen3_vl_style_processor_is_enforced():
    spec = VisionSpec(16, 2, 2, (0.5,) * 3, (0.5,) * 3, min_pixels=65536, max_pixels=16777216)
    with pytest.raises(ValueError, match="256"):
        validate_image_size(64, 64, spec, "Qwen/Qwen3.5-0.8B")
    validate_image_size(256, 256, spec)
