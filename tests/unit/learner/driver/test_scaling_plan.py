"""The plans behind scaling, checked on the CPU: tensor-parallel vLLM workers (placement group,
engine arguments, the placement check) and learner replicas' resource requests."""

import pytest

from learner.driver.cli import compose_config
from learner.driver.cluster import (
    PlacementError,
    actor_requests,
    check_placement,
    engine_options,
    learner_names,
    tensor_parallel_plan,
)
from rollout_worker.vllm_engine import engine_kwargs
from shared.config import ConfigError, validate
from shared.errors import UserError


def _cfg(*overrides):
    cfg = compose_config(*overrides)
    validate(cfg)
    return cfg


def _node(gpus: float, cpus: float = 16, node_id: str = "n" * 16) -> dict:
    return {"NodeID": node_id, "Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_a_tensor_parallel_worker_gets_k_gpus_of_one_node():
    cfg = _cfg("cluster=multi_gpu", "rollout.tensor_parallel_size=4", "rollout.num_workers=2")
    plan = tensor_parallel_plan(cfg)
    assert plan == {
        "bundles": [{"CPU": 2.0, "GPU": 4.0}],
        "strategy": "STRICT_PACK",
        "actor_num_gpus": 4.0,
    }
    requests = actor_requests(cfg)
    assert requests["rollout-worker-0"] == {"CPU": 2.0, "GPU": 4.0}
    assert requests["learner"] == {"CPU": 2.0, "GPU": 1.0}
    options = engine_options(cfg, "cuda")
    assert options["tensor_parallel_size"] == 4
    kwargs = engine_kwargs("m", "bfloat16", 0.85, 4096, 0, tensor_parallel_size=4)
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["distributed_executor_backend"] == "mp"
    assert "tensor_parallel_size" not in engine_kwargs("m", "bfloat16", 0.85, 4096, 0)


def test_the_placement_check_counts_k_gpus_per_worker_on_one_node():
    cfg = _cfg("cluster=multi_gpu", "rollout.tensor_parallel_size=2", "rollout.num_workers=2")
    requests = actor_requests(cfg)
    # 5 GPUs in all (learner 1 + 2 workers x 2), but no node with 2 free for one worker
    spread = [_node(1, node_id=f"{i}" * 16) for i in range(5)]
    with pytest.raises(PlacementError, match=r"no single node can hold rollout-worker-0.*GPU"):
        check_placement(requests, spread)
    with pytest.raises(PlacementError, match=r"asked for 5 GPU in all.*rollout-worker-1 2"):
        check_placement(requests, [_node(4)])
    check_placement(requests, [_node(4, node_id="a" * 16), _node(1, node_id="b" * 16)])


def test_tensor_parallel_needs_vllm_and_gpus():
    with pytest.raises(ConfigError, match="needs rollout=vllm"):
        _cfg("rollout.tensor_parallel_size=2")
    with pytest.raises(ConfigError, match="many whole GPUs"):
        _cfg("rollout=vllm", "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=0")
    # null GPUs per worker resolved to 0 on a cluster without GPUs: the plan refuses
    cfg = _cfg("rollout=vllm", "rollout.tensor_parallel_size=2")
    cfg.rollout.num_gpus_per_worker = 0
    with pytest.raises(UserError, match="the workers have none"):
        tensor_parallel_plan(cfg)
    assert tensor_parallel_plan(_cfg("cluster=multi_gpu")) is None


def test_replicas_each_ask_for_the_learners_resources():
    cfg = _cfg("cluster=multi_gpu", "learner.num_replicas=3")
    requests = actor_requests(cfg)
    assert [n for n in requests if n.startswith("learner")] == ["learner", "learner-1", "learner-2"]
    assert all(requests[n] == {"CPU": 2.0, "GPU": 1.0} for n in learner_names(3))
    assert learner_names(0) == [] and learner_names(1) == ["learner"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.max_workers=1", "rollout.num_workers=2"], "max_workers=1 must be >= "),
        (["rollout.min_workers=3", "rollout.num_workers=2"], "min_workers=3 must be in"),
        (["rollout.min_workers=0"], "min_workers=0 must be in"),
        (["learner.num_replicas=0"], "num_replicas=0"),
        (["cluster=single_gpu", "learner.num_replicas=2"], "runs one learner"),
        (
            ["rollout=vllm", "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=0.5"],
            "many whole GPUs: set rollout.num_gpus_per_worker=1",
        ),
        (
            ["cluster=multi_gpu", "learner.num_replicas=2", "learner.num_gpus=0.5"],
            "each replica needs a GPU of its own",
        ),
    ],
)
def test_scaling_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)
