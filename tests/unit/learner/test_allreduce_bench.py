"""The all-reduce benchmark: its analytic gradient sizes are those of the real tiny model and of
the adapter PEFT really injects; a small all-reduce between two processes is timed."""

import pytest

from learner.bench.allreduce import gradient_sizes, measure_allreduce
from learner.lora import attach_lora
from learner.policy import load_model_and_processor
from shared.config import LoraSettings


@pytest.fixture(scope="module")
def tiny_sizes():
    return gradient_sizes("tiny", 64, 64)


def test_image_gradient_is_the_pixels(tiny_sizes):
    assert tiny_sizes["image"] == 3 * 64 * 64


def test_full_and_lora_sizes_match_the_real_model(tiny_sizes, tiny_model_path):
    model, _ = load_model_and_processor(tiny_model_path)
    assert tiny_sizes["full"] == sum(p.numel() for p in model.parameters())
    defaults = LoraSettings()
    peft_model = attach_lora(
        model, 16, defaults.alpha, 0.0, defaults.target_modules, model_name="tiny"
    )
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert adapter > 0 and tiny_sizes["lora"] == adapter


def test_a_small_allreduce_is_timed():
    result = measure_allreduce(1000, repeats=1)
    assert result["elements"] == 1000 and result["bytes"] == 4000
    assert result["seconds_median"] > 0 and result["seconds_min"] > 0 and result["gbps"] > 0
