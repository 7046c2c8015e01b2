"""Model presets, and the configuration bugs a real first run would have met."""

import pytest

from learner.driver.cli import compose_config, rewrite_model_override
from learner.driver.cluster import actor_requests
from shared.config import ConfigError, learner_gpus, validate

FAMILY = {
    "qwen3_5_0_8b": ("Qwen/Qwen3.5-0.8B", 852_985_920),
    "qwen3_5_2b": ("Qwen/Qwen3.5-2B", 2_213_241_664),
    "qwen3_5_4b": ("Qwen/Qwen3.5-4B", 4_539_265_536),
    "qwen3_5_9b": ("Qwen/Qwen3.5-9B", 9_409_813_744),
    "qwen3_5_27b": ("Qwen/Qwen3.5-27B", 27_356_728_560),
}


def compose(*overrides):
    return compose_config(*rewrite_model_override(list(overrides)))


@pytest.mark.parametrize("preset", FAMILY)
def test_every_qwen3_5_preset_is_a_real_gpu_run(preset):
    name, params = FAMILY[preset]
    for cfg in (compose(f"model={preset}"), compose(f"model={name}")):  # by preset or hub id
        validate(cfg)
        assert (cfg.model.name, cfg.model.num_parameters) == (name, params)
        assert (cfg.model.dtype, cfg.model.device) == ("bfloat16", "cuda")
        assert cfg.learner.activation_checkpointing is True
        assert cfg.learner.max_tokens_per_micro_batch >= 1024
        assert (cfg.image.height, cfg.image.width) == (256, 256)
        assert learner_gpus(cfg) == 1


def test_budgets_and_memory_figures_grow_with_the_model():
    cfgs = [compose(f"model={p}") for p in FAMILY]
    per_token = [c.model.learner_bytes_per_token for c in cfgs]
    budgets = [c.learner.max_tokens_per_micro_batch for c in cfgs]
    assert per_token == sorted(per_token) and budgets == sorted(budgets, reverse=True)


def test_the_readme_real_run_gives_the_learner_its_own_gpu():
    """The bug: model=qwen3_5_0_8b rollout=vllm composed learner.num_gpus=0 with
    model.device=cuda, so the learner landed on a rollout worker's GPU."""
    cfg = compose("model=qwen3_5_0_8b", "rollout=vllm", "image=paper", "task=gsm8k")
    validate(cfg)
    assert actor_requests(cfg)["learner"]["GPU"] == 1
    with pytest.raises(ConfigError, match="learner.num_gpus=0 asks Ray for none"):
        validate(compose("model=qwen3_5_0_8b", "learner.num_gpus=0"))
    assert learner_gpus(compose("model=tiny")) == 0


def test_a_hub_id_without_a_preset_gets_the_gpu_preset_and_says_so(caplog):
    with caplog.at_level("WARNING"):
        cfg = compose("model=acme/vlm-3b", "rollout=vllm")
    assert "model=acme/vlm-3b has no preset" in caplog.text
    validate(cfg)
    assert (cfg.model.name, cfg.model.dtype, cfg.model.device) == (
        "acme/vlm-3b",
        "bfloat16",
        "cuda",
    )
    assert cfg.learner.activation_checkpointing and learner_gpus(cfg) == 1
    tiny = compose("model=tiny")
    assert (tiny.model.dtype, tiny.model.device, tiny.image.height) == ("float32", "cpu", 64)


def test_too_many_extra_rounds_are_refused_before_the_seeds_run_out():
    validate(compose("algo.max_extra_rounds=63"))
    with pytest.raises(ConfigError, match="algo.max_extra_rounds=64: use 0 to 63"):
        validate(compose("algo.max_extra_rounds=64"))
