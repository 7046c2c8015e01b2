"""Real vLLM on a CPU: rollout workers run in the vLLM environment (`make install-vllm`,
`.venv-vllm`) while these tests, the driver and the learner run in the project's own.

Where that environment is missing the tests skip, except under CI (`CI=true`), where they fail:
CI installs it first. The engine of the embedded tiny model starts in about 30-50 s on 2 cores,
so each module builds as few as it can.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# `make test-gpu` runs these on a GPU: ART_VLLM_TEST_GPUS=1 (and ART_VLLM_PYTHON: the GPU
# build's environment); the engine's dtype from ART_VLLM_TEST_DTYPE (bfloat16 by default:
# vLLM's CPU linear-attention kernel has no float32).
GPUS = int(os.environ.get("ART_VLLM_TEST_GPUS", "0"))
DTYPE = os.environ.get("ART_VLLM_TEST_DTYPE", "bfloat16")


def vllm_python_path() -> Path:
    return Path(os.environ.get("ART_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vLLM environment's interpreter; its absence fails under CI."""
    path = vllm_python_path()
    if not path.exists():
        message = f"{path} not found: run `make install-vllm` (or set ART_VLLM_PYTHON)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


@pytest.fixture
def vllm_cfg(tmp_path, vllm_python):
    """make_cfg for rollout=vllm on a CPU with the vLLM environment's interpreter."""
    from learner.driver.cli import compose_config

    def make(*overrides, run_dir=None):
        return compose_config(
            f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"logging.artifact_location={tmp_path}/artifacts",
            "rollout=vllm", f"rollout.python={vllm_python}", f"rollout.num_gpus_per_worker={GPUS}",
            f"rollout.dtype={DTYPE}", "rollout.max_model_len=512", *overrides,
            run_dir=str(run_dir or tmp_path / "run"),
        )  # fmt: skip

    return make


@pytest.fixture(scope="session")
def stock_server(vllm_python, tiny_model_path, tmp_path_factory):
    """One stock OpenAI-compatible vLLM server of the embedded model (served as "tiny") on
    loopback, shared by every test that needs one (the serving tests come last, by file
    name, so it is up only for them)."""
    from rollout_worker.gateway.launch import MM_LIMITS, VllmServer, cpu_server_args

    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    extra = [*MM_LIMITS, *cpu_server_args()]  # bf16, eager, a 256 MiB KV cache (also on a GPU)
    server = VllmServer(tiny_model_path, "tiny", extra_args=extra, log_path=log, python=vllm_python)
    with server.start(timeout_s=300):
        print(f"\nvllm serve up in {server.start_s:.0f}s")
        yield server
