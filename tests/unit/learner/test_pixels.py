import numpy as np
import torch

from learner.pixels import PixelImage, quantize_ste
from shared.artifact import decode_png


def test_every_uint8_value_survives_the_logit_parameterization():
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([values.reshape(16, 16)] * 3, axis=-1)
    np.testing.assert_array_equal(PixelImage.from_uint8(pixels).to_uint8(), pixels)


def test_quantized_forward_equals_the_png_exactly_and_gradient_flows():
    image = PixelImage.noise(32, 32, seed=3)
    with torch.no_grad():
        image.theta_CHW.add_(0.123)  # move off the grid so quantization matters
    xq_CHW = image()
    u8_HWC, _ = decode_png(image.to_png())
    expected = torch.from_numpy(u8_HWC).permute(2, 0, 1).float() / 255.0
    assert torch.equal(xq_CHW.detach(), expected)
    (xq_CHW * torch.randn_like(xq_CHW)).sum().backward()
    assert image.theta_CHW.grad is not None
    assert image.theta_CHW.grad.abs().sum() > 0


def test_straight_through_gradient_is_identity():
    x = torch.rand(3, 4, 4, requires_grad=True)
    quantize_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_png_carries_metadata():
    png = PixelImage.gray(32, 32).to_png({"model": "m", "step": 3})
    pixels, meta = decode_png(png)
    assert meta == {"model": "m", "step": "3"}
    assert np.all(pixels == 128)
