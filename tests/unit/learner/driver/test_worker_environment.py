"""Where rollout workers run: their interpreter (rollout.python) and their GPUs or the CPU."""

import pytest

from learner.driver import cluster
from learner.driver.cli import compose_config
from rollout_worker.worker import portable
from shared import engines
from shared.config import ConfigError, validate
from shared.errors import UserError


class FakeRay:
    def __init__(self, gpus: float):
        self.gpus = gpus

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.gpus} if self.gpus else {"CPU": 8.0}


def test_vllm_workers_run_in_the_vllm_environment_hf_workers_in_the_drivers(monkeypatch, tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.setenv("ART_VLLM_PYTHON", str(python))
    on_gpu = compose_config("rollout=vllm", "rollout.num_gpus_per_worker=1")
    assert cluster.worker_runtime_env(on_gpu) == {"py_executable": str(python)}
    # a worker without a GPU is told so (Ray leaves CUDA_VISIBLE_DEVICES alone at zero GPUs)
    on_cpu = compose_config("rollout=vllm", "rollout.num_gpus_per_worker=0")
    assert cluster.worker_runtime_env(on_cpu) == {
        "py_executable": str(python),
        "env_vars": {"CUDA_VISIBLE_DEVICES": ""},
    }
    assert cluster.worker_runtime_env(compose_config("rollout=hf")) == {
        "env_vars": {"CUDA_VISIBLE_DEVICES": ""}
    }
    assert cluster.worker_python(compose_config("rollout=vllm", "rollout.python=self")) is None
    monkeypatch.delenv("ART_VLLM_PYTHON")
    monkeypatch.setattr(engines, "VLLM_VENV_PYTHON", python)
    assert cluster.worker_python(compose_config("rollout=vllm")) == str(python)


def test_a_missing_worker_python_or_vllm_is_refused_with_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="rollout.python=/no/such/python does not exist"):
        cluster.worker_python(compose_config("rollout=vllm", "rollout.python=/no/such/python"))
    monkeypatch.delenv("ART_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(engines, "VLLM_VENV_PYTHON", tmp_path / "absent")
    with pytest.raises(UserError, match="make install-vllm"):  # this venv has no vLLM
        cluster.worker_python(compose_config("rollout=vllm"))
    # on a cluster the driver cannot look at the nodes: the workers use its interpreter
    assert cluster.worker_python(compose_config("rollout=vllm", "cluster=existing")) is None


@pytest.mark.parametrize(("gpus", "device", "per_worker"), [(0, "cpu", 0), (2, "cuda", 1)])
def test_vllm_workers_take_a_gpu_where_the_cluster_has_gpus(gpus, device, per_worker):
    cfg = compose_config("rollout=vllm")
    assert cfg.rollout.num_gpus_per_worker is None
    assert cluster.resolve_rollout_gpus(cfg, FakeRay(gpus)) == device
    assert cfg.rollout.num_gpus_per_worker == per_worker
    assert cluster.actor_requests(cfg)["rollout-worker-0"].get("GPU", 0) == per_worker


def test_an_explicit_gpu_request_is_kept_and_an_autoscaling_cluster_counts_as_gpus():
    cfg = compose_config("rollout=hf", "rollout.num_gpus_per_worker=1")
    assert cluster.resolve_rollout_gpus(cfg, FakeRay(0)) == "cuda"  # the placement check refuses
    cfg = compose_config("rollout=vllm", "cluster.check_resources=false")
    assert cluster.resolve_rollout_gpus(cfg, FakeRay(0)) == "cuda"


def test_vllm_settings_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="vLLM samples at temperatures up to 2"):
        validate(compose_config("rollout=vllm", "algo.temperature=2.5"))
    with pytest.raises(ConfigError, match="rollout.num_gpus_per_worker must be >= 0"):
        validate(compose_config("rollout.num_gpus_per_worker=-1"))


def test_engine_errors_cross_to_a_driver_without_the_engines_packages():
    class VLLMValidationError(ValueError):  # a type the driver's environment lacks
        pass

    VLLMValidationError.__module__ = "vllm.exceptions"
    err = portable(VLLMValidationError("temperature must be in [0, 2]"))
    assert type(err) is RuntimeError
    assert str(err) == "vllm.exceptions.VLLMValidationError: temperature must be in [0, 2]"
    same = ValueError("bad PNG")
    assert portable(same) is same
