"""A real two-node Ray cluster on loopback, the job submitted the way `make cluster-train` does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.bench import local_cluster

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def two_node_cluster():
    with local_cluster.two_node_cluster({"learner_node": 1}, {"rollout_node": 2}) as cluster:
        yield cluster


@pytest.mark.slow
def test_job_runs_on_two_nodes_with_workers_on_the_worker_node(two_node_cluster, tmp_path):
    env = two_node_cluster["env"]
    nodes = two_node_cluster["nodes"]
    assert len(nodes) == 2, nodes
    learner_node = next(n for n, keys in nodes.items() if "learner_node" in keys)
    rollout_node = next(n for n, keys in nodes.items() if "rollout_node" in keys)

    outputs = tmp_path / "outputs"
    submit = [
        str(BIN / "art-submit"),
        "--address",
        two_node_cluster["dashboard"],
        "--wait",
        "--timeout",
        "900",
        "--python",
        sys.executable,
        "--",
        "cluster=existing",
        "steps=4",
        "eval.every=0",
        "rollout.num_workers=2",
        "rollout.num_cpus_per_worker=0.5",
        "learner.num_cpus=0.5",
        "+rollout.resources.rollout_node=1",
        "+learner.resources.learner_node=1",
        f"output_dir={outputs}",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
    ]
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=1200)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "submitted job:" in result.stdout and "SUCCEEDED" in result.stdout
    runs = list(outputs.glob("*/summary.json"))
    assert len(runs) == 1
    summary = json.loads(runs[0].read_text())
    assert (runs[0].parent / "art.png").exists()
    assert summary["steps"] == 4 and summary["image_version"] >= 1
    assert summary["placement"]["learner"] == learner_node
    assert summary["placement"]["rollout-worker-0"] == rollout_node
    assert summary["placement"]["rollout-worker-1"] == rollout_node
