"""cluster=single_gpu: the placement plan and the memory rule of one shared GPU (CPU checks;
tests/unit/rollout_worker/test_vllm_cuda.py runs it on a GPU)."""

import pytest

from learner.driver.cli import compose_config, rewrite_model_override
from learner.driver.cluster import actor_requests
from learner.driver.single_gpu import GIB, SingleGpuError, apply_plan, plan
from shared.config import ConfigError, validate

PER_TOKEN = 100_000  # bytes


def test_side_by_side_when_it_fits_with_vllm_taking_the_rest():
    p = plan(80 * GIB, 852_985_920, PER_TOKEN, tokens=8192, sleep_mode=None)
    weights = 2 * 852_985_920
    assert not p.sleep_mode and p.tokens_per_micro_batch == 8192
    assert p.learner_bytes == int(weights + 1.5 * GIB + 8192 * PER_TOKEN)
    # vLLM gets what the learner leaves of 95% of the GPU, and at least weights + 2 GiB
    assert p.vllm_fraction * 80 * GIB == pytest.approx(0.95 * 80 * GIB - p.learner_bytes)
    assert p.vllm_fraction * 80 * GIB >= weights + 2 * GIB


def test_sleep_mode_when_the_micro_batch_only_fits_in_vllms_share():
    # 24 GiB, 4B model (8.5 GiB of weights): side by side, 2.4 GiB are left for activations;
    # 32k tokens of 100 kB need 3.1 GiB, which fit only while vLLM sleeps
    weights = 2 * 4_539_265_536
    p = plan(24 * GIB, 4_539_265_536, PER_TOKEN, tokens=32768, sleep_mode=None)
    assert p.sleep_mode and p.tokens_per_micro_batch == 32768
    vllm = p.vllm_fraction * 24 * GIB
    assert vllm == pytest.approx(0.95 * 24 * GIB - (weights + 1.5 * GIB))
    assert vllm >= weights + 2 * GIB
    assert not plan(24 * GIB, 4_539_265_536, PER_TOKEN, tokens=16384, sleep_mode=None).sleep_mode
    with pytest.raises(SingleGpuError, match="rollout.sleep_mode=true"):
        plan(24 * GIB, 4_539_265_536, PER_TOKEN, tokens=32768, sleep_mode=False)


def test_the_largest_budget_that_fits_when_none_is_given():
    p = plan(80 * GIB, 852_985_920, PER_TOKEN, tokens=None, sleep_mode=False)
    room = 0.95 * 80 * GIB - (2 * 852_985_920 + 1.5 * GIB) - (2 * 852_985_920 + 2 * GIB)
    assert p.tokens_per_micro_batch == int(room // PER_TOKEN)


def test_a_model_that_cannot_share_one_gpu_is_refused_with_what_to_do():
    with pytest.raises(SingleGpuError, match="cluster=multi_gpu"):
        plan(24 * GIB, 27_356_728_560, PER_TOKEN, tokens=4096, sleep_mode=None)


def test_the_single_gpu_config_places_both_actors_on_one_gpu_and_writes_the_plan():
    cfg = compose_config(
        *rewrite_model_override(["model=Qwen/Qwen3.5-0.8B", "cluster=single_gpu"]),
        "cluster.gpu_memory_gib=80",
    )
    validate(cfg)
    chosen = apply_plan(cfg)
    requests = actor_requests(cfg)
    assert requests["learner"]["GPU"] + requests["rollout-worker-0"]["GPU"] == 1.0
    assert cfg.rollout.gpu_memory_utilization == pytest.approx(chosen.vllm_fraction, abs=1e-4)
    assert cfg.learner.max_tokens_per_micro_batch == chosen.tokens_per_micro_batch
    assert cfg.rollout.sleep_mode is False and "vLLM" in chosen.describe()
    with pytest.raises(ConfigError, match="set rollout.num_workers=1"):
        validate(compose_config("cluster=single_gpu", "rollout.num_workers=2"))
    with pytest.raises(ConfigError, match="use one of them"):
        validate(compose_config("rollout.sleep_mode=true", "algo.max_staleness=1"))
