"""What a cluster cannot place fails fast with a message naming what was asked and what exists."""

import time

import pytest

from learner.driver.cluster import PlacementError, actor_requests, check_placement, create_actors


def test_impossible_gpu_request_fails_fast_with_numbers(ray_local, tiny_model_path, make_cfg):
    cfg = make_cfg("rollout.num_workers=3", "rollout.num_gpus_per_worker=1", "learner.num_gpus=1")
    start = time.monotonic()
    with pytest.raises(
        PlacementError,
        match=r"asked for 4 GPU in all \(learner 1, rollout-worker-0 1, .*\), the cluster has 0 GPU",
    ):
        create_actors(cfg, ray_local, tiny_model_path)
    assert time.monotonic() - start < 30
    assert not [a for a in ray_local.util.list_named_actors() if a.startswith("rollout-worker")]


def test_an_actor_too_big_for_every_node_is_named():
    nodes = [
        {"NodeID": "a" * 16, "Alive": True, "Resources": {"CPU": 8, "GPU": 1}},
        {"NodeID": "b" * 16, "Alive": True, "Resources": {"CPU": 8, "GPU": 1}},
    ]
    requests = {"learner": {"CPU": 1, "GPU": 2}}
    with pytest.raises(PlacementError, match=r"no single node can hold learner"):
        check_placement(requests, nodes)
    check_placement({"learner": {"CPU": 1, "GPU": 1}, "rollout-worker-0": {"GPU": 1}}, nodes)


def test_workers_scale_independently_of_the_learner(make_cfg):
    requests = actor_requests(make_cfg("cluster=multi_gpu", "rollout.num_workers=6"))
    assert requests["learner"]["GPU"] == 1
    assert [n for n in requests if n.startswith("rollout-worker")] == [
        f"rollout-worker-{i}" for i in range(6)
    ]
    assert all(requests[f"rollout-worker-{i}"]["GPU"] == 1 for i in range(6))


def test_actor_start_timeout_names_the_pending_actors(ray_local, tiny_model_path, make_cfg):
    cfg = make_cfg(
        "+rollout.resources.no_such_node=1",
        "cluster.check_resources=false",
        "cluster.actor_start_timeout_s=3",
    )
    with pytest.raises(PlacementError, match=r"rollout-worker-0.*did not start within 3s"):
        create_actors(cfg, ray_local, tiny_model_path)
