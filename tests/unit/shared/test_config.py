import pytest

from learner.driver.algorithms import check_config
from learner.driver.cli import compose_config
from shared.config import ConfigError, validate


def _compose(*overrides):
    return compose_config(*overrides)


def test_default_config_is_the_embedded_default():
    cfg = _compose()
    validate(cfg)
    assert cfg.model.name == "tiny"
    assert cfg.task.name == "synthetic"
    assert cfg.rollout.engine == "hf"


def test_real_run_groups_compose():
    cfg = _compose("model=qwen3_5_0_8b", "rollout=vllm", "image=paper")
    assert cfg.model.name == "Qwen/Qwen3.5-0.8B"
    assert cfg.rollout.num_gpus_per_worker is None  # one where the cluster has GPUs
    assert cfg.image.height == 256
    validate(cfg)


def test_unknown_key_is_rejected_by_the_schema():
    with pytest.raises(Exception, match="no_such_field"):
        _compose("algo.no_such_field=1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.group_size=1"], "group_size"),
        (["rollout.engine=sglang"], "rollout.engine"),
        (["rollout=vllm", "algo.temperature=3"], "temperatures up to 2"),
        (["rollout.max_new_tokens=4", "algo.overlong_buffer=4"], "overlong_buffer"),
        (["algo.num_minibatches=0"], "num_minibatches"),
        (["rollout.top_p=0.9"], "top_p=1.0 because the learner"),
        (["algo.filter_metric=std"], "filter_metric"),
        (["task.rewards=[r.py:f]", "task.reward_weights=[1,2]"], "2 weights for 1 task.rewards"),
        (["task.reward_range=[1,0]"], r"task.reward_range=\[1.0, 0.0\]: give \[min, max\]"),
        (["+task.reward_ranges.f=[0]"], "task.reward_ranges.f=\\[0.0\\]"),
        (["task.reward_timeout_s=0"], "task.reward_timeout_s must be > 0"),
        (["task.reward_processes=-1"], "task.reward_processes must be >= 0"),
        (["task=class"], "task=class needs task.name="),
    ],
)
def test_impossible_combinations_fail_with_what_to_set(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_compose(*overrides))  # the sections' rules and the algorithm's


def test_multi_gpu_gives_every_actor_its_own_gpu():
    cfg = _compose("cluster=multi_gpu", "rollout.num_workers=6")
    validate(cfg)
    assert cfg.cluster.address == "auto"
    assert cfg.rollout.engine == "vllm" and cfg.rollout.num_gpus_per_worker == 1
    assert cfg.learner.num_gpus == 1 and cfg.model.device == "cuda"
    assert cfg.rollout.num_workers == 6


def test_model_hub_id_override_becomes_model_name():
    from learner.driver.cli import rewrite_model_override

    assert rewrite_model_override(["model=Qwen/Qwen3.5-0.8B", "task=gsm8k"]) == [
        "model=qwen3_5_0_8b",  # the preset that names it
        "task=gsm8k",
    ]
    assert rewrite_model_override(["model=qwen3_5_0_8b"]) == ["model=qwen3_5_0_8b"]
    assert rewrite_model_override(["model=/data/my-vlm"]) == [
        "model=hub",
        "model.name=/data/my-vlm",
    ]
