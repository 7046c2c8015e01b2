"""On a GPU machine (`make test-gpu`): one-GPU mode for real. vLLM runs in its own environment
(ART_VLLM_PYTHON, or .venv-vllm built from deploy/vllm/requirements-gpu.txt), as in
production; the vLLM engine tests themselves are tests/vllm_cpu, which `make test-gpu` runs on
the GPU (ART_VLLM_TEST_GPUS=1)."""

import pytest

pytestmark = pytest.mark.gpu


def test_one_gpu_mode_trains_with_the_engine_asleep_during_the_update(tmp_path):
    """cluster=single_gpu: the learner and one vLLM worker on one GPU, vLLM's share from the
    memory plan, the engine put to sleep for every update and woken for sampling."""
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    cfg = compose_config(
        "cluster=single_gpu", "rollout.sleep_mode=true", "steps=3", "eval.every=0",
        "rollout.max_model_len=512", f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    summary = train(cfg)
    assert len(summary["rewards"]) == 3 and summary["worker_restarts"] == 0
    assert len(set(summary["placement"].values())) == 1  # one node, one GPU
    assert 0 < cfg.rollout.gpu_memory_utilization < 0.95


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_gpus() < 3, reason="needs 3 GPUs: a 2-GPU tensor-parallel worker + learner")
def test_a_tensor_parallel_vllm_worker_trains(tmp_path):
    """rollout.tensor_parallel_size=2: one vLLM worker on a placement group of 2 GPUs of one
    node, the learner on a third."""
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    cfg = compose_config(
        "cluster=local", "rollout=vllm", "rollout.num_workers=1",
        "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=1", "model.device=cuda",
        "steps=3", "eval.every=0", "rollout.max_model_len=512",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db", run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    summary = train(cfg)
    assert len(summary["rewards"]) == 3 and summary["worker_restarts"] == 0


@pytest.mark.skipif(_gpus() < 3, reason="needs 3 GPUs: 2 learner replicas + a vLLM worker")
def test_two_learner_replicas_on_two_gpus_all_reduce_with_nccl(tmp_path):
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    cfg = compose_config(
        "cluster=local", "rollout=vllm", "rollout.num_workers=1", "model.device=cuda",
        "learner.num_replicas=2", "steps=3", "eval.every=0", "rollout.max_model_len=512",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db", run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    summary = train(cfg)
    assert summary["learner_replicas"] == 2 and len(summary["rewards"]) == 3
