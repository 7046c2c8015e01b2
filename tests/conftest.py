"""Shared fixtures: the tiny offline model (shipped with the repository), Ray, the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA GPU (their vLLM runs in the vLLM environment, as in
    production); skip them cleanly elsewhere."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    reason = "needs a CUDA GPU (make test-gpu on a GPU machine)"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from learner.models.embedded import embedded_model_path

    return str(embedded_model_path("tiny"))


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_path)


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Small subsets of the offline datasets, in the repository (tests/fixtures/README.md)."""
    return FIXTURES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """ART_DATA_DIR (default ../shared/data); skipped where absent, but a failure under CI."""
    path = Path(os.environ.get("ART_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        message = f"offline data folder {path} not found (set ART_DATA_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


RAY_LOCAL = {"num_cpus": 4, "include_dashboard": False, "log_to_driver": False}


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(**RAY_LOCAL)
    yield ray
    ray.shutdown()


@pytest.fixture
def fresh_ray(ray_local):
    """ray_local restarted: a cluster with nothing of the earlier tests' left on it (for a test
    that counts on the cluster's free CPUs or its named actors); later tests get it too."""
    ray_local.shutdown()
    ray_local.init(**RAY_LOCAL)
    return ray_local
