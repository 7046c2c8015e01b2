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
    # vLLM gets what the learner leaves of 95% of the GPU, and at least weights + 6 GiB
    assert p.vllm_fraction * 80 * GIB == pytest.approx(0.95 * 80 * GIB - p.learner_bytes)
    assert p.vllm_fraction * 80 * GIB >= weights + 6 * GIB


def test_sleep_mode_when_the_micro_batch_only_fits_in_vllms_share():
    # 48 GiB, 4B model (8.5 GiB of weights): side by side 21 GiB are left for activations;
    # 32k tokens of 1 MB need 30.5 GiB, which fit only while vLLM sleeps (3 GiB left to it)
    weights, big = 2 * 4_539_265_536, 1_000_000
    p = plan(48 * GIB, 4_539_265_536, big, tokens=32768, sleep_mode=None)
    assert p.sleep_mode and p.tokens_per_micro_batch == 32768
    vllm = p.vllm_fraction * 48 * GIB
    assert vllm == pytest.approx(0.95 * 48 * GIB - (weights + 1.5 * GIB))
    assert vllm >= weights + 6 * GIB
    assert not plan(48 * GIB, 4_539_265_536, big, tokens=16384, sleep_mode=None).sleep_mode
    with pytest.raises(SingleGpuError, match="rollout.sleep_mode=true"):
        plan(48 * GIB, 4_539_265_536, big, tokens=32768, sleep_mode=False)


def test_the_longest_sequence_is_planned_for_even_above_the_budget():
    # a 4096-token sequence gets a pass of its own: planned, although the budget is 1024
    p = plan(80 * GIB, 852_985_920, PER_TOKEN, tokens=1024, sleep_mode=False, max_sequence=4096)
    assert p.learner_bytes == int(2 * 852_985_920 + 1.5 * GIB + 4096 * PER_TOKEN)


def test_with_overlap_the_plan_never_puts_the_engine_to_sleep():
    cfg = compose_config(
        *rewrite_model_override(["model=Qwen/Qwen3.5-4B", "cluster=single_gpu"]),
        "cluster.gpu_memory_gib=48", "algo.max_staleness=1",
        "learner.max_tokens_per_micro_batch=16384",  # 34 GiB of activations: only with sleep
    )  # fmt: skip
    with pytest.raises(SingleGpuError, match="with algo.max_staleness=0"):
        apply_plan(cfg)


def test_the_largest_budget_that_fits_when_none_is_given_up_to_one_full_pass():
    p = plan(80 * GIB, 852_985_920, PER_TOKEN, tokens=None, sleep_mode=False)
    assert p.tokens_per_micro_batch == 32 * 4096  # micro_batch_size x max_model_len
    small = plan(24 * GIB, 852_985_920, 500_000, tokens=None, sleep_mode=False)
    room = 0.95 * 24 * GIB - (2 * 852_985_920 + 1.5 * GIB) - (2 * 852_985_920 + 6 * GIB)
    assert small.tokens_per_micro_batch == int(room // 500_000)


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
