"""Deploy files: YAML parses, manifests have the right kinds, the Dockerfile builds both
environments (the learner with its CUDA kernels, vLLM with its pins)."""

import re
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent


def test_kuberay_manifests_parse_with_the_right_kinds():
    cluster = yaml.safe_load((DEPLOY / "k8s" / "raycluster.yaml").read_text())
    job = yaml.safe_load((DEPLOY / "k8s" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert "learner.driver.train" in job["spec"]["entrypoint"]
    assert "cluster=multi_gpu" in job["spec"]["entrypoint"]
    gpu_group = cluster["spec"]["workerGroupSpecs"][0]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_ray_up_config_parses():
    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])


def test_dockerfile_builds_the_learner_and_the_vllm_environments():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", dockerfile, re.M)
    # exactly the lock, reasoning-gym too; then the project itself without dependencies
    assert "pip install --require-hashes -r deploy/learner/lock-tasks.txt" in dockerfile
    assert "pip install --no-deps -e ." in dockerfile
    assert "/opt/venv-vllm/bin/pip install -r deploy/vllm/requirements-gpu.txt" in dockerfile
    assert "ENV ART_VLLM_PYTHON=/opt/venv-vllm/bin/python" in dockerfile
    for package in ("shared", "learner", "rollout_worker", "conf"):
        assert f"COPY {package} " in dockerfile, package
    assert (REPO / "deploy" / "serve" / "README.md").exists()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.split("[")[0].strip().lower()] = version.strip()
    return out


def test_one_ray_version_in_every_environment():
    """Actors of one cluster run one Ray: the project's pin equals the vLLM environments'."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray")]
    version = project[0].split("==")[1]
    for name in ("constraints-cpu.txt", "cpu-lock.txt", "requirements-gpu.txt"):
        assert pins(DEPLOY / "vllm" / name)["ray"] == version, name


def test_the_cuda_install_brings_the_fast_linear_attention_kernels():
    """The learner's CUDA install (make install-cuda-kernels, the Dockerfile) pins
    flash-linear-attention and causal-conv1d, the latter built against the installed torch."""
    script = (DEPLOY / "learner" / "install-cuda-kernels.sh").read_text()
    assert 'pip install --require-hashes -r "$here/lock-cuda-kernels.txt"' in script
    kernels = (DEPLOY / "learner" / "lock-cuda-kernels.txt").read_text()
    assert re.search(r"^flash-linear-attention==0\.6\.0 \\$", kernels, re.M)
    assert '--no-build-isolation "causal-conv1d==1.7.0"' in script
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "bash deploy/learner/install-cuda-kernels.sh /opt/venv/bin/python" in dockerfile
    assert re.search(r"^FROM nvidia/cuda:\S+-devel-", dockerfile, re.M)  # nvcc for the build
    makefile = (REPO / "Makefile").read_text()
    assert "install-cuda-kernels: install" in makefile


def test_the_vllm_gpu_environment_pins_transformers_as_tested():
    """vLLM 0.25.1 accepts any transformers>=5.5.3: the image pins the version the project's
    vLLM code runs with (the CPU build's lock)."""
    gpu = pins(DEPLOY / "vllm" / "requirements-gpu.txt")
    assert gpu["transformers"] == pins(DEPLOY / "vllm" / "cpu-lock.txt")["transformers"]
