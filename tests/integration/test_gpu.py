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
