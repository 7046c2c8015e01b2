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


def _submit(cluster, tmp_path, name: str, *overrides: str) -> subprocess.Popen:
    outputs = tmp_path / name
    command = [
        str(BIN / "art-submit"),
        "--address",
        cluster["dashboard"],
        "--wait",
        "--timeout",
        "900",
        "--python",
        sys.executable,
        "--",
        "cluster=existing",
        "eval.every=0",
        "rollout.num_cpus_per_worker=0.5",
        "learner.num_cpus=0.5",
        f"output_dir={outputs}",
        f"logging.tracking_uri=sqlite:///{tmp_path}/{name}.db",
        f"logging.artifact_location={tmp_path}/{name}-artifacts",
        *overrides,
    ]
    return subprocess.Popen(
        command, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _scale(cluster, workers: int) -> dict:
    command = [
        str(BIN / "art-scale"),
        "--address",
        cluster["dashboard"],
        "--python",
        sys.executable,
        "--workers",
        str(workers),
        "--wait",
        "600",
    ]
    done = subprocess.run(command, env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _finished(job: subprocess.Popen, tmp_path, name: str) -> tuple[dict, bytes]:
    out, _ = job.communicate(timeout=1200)
    print(out[-3000:])
    assert job.returncode == 0, out[-3000:]
    (summary_path,) = (tmp_path / name).glob("*/summary.json")
    return json.loads(summary_path.read_text()), (summary_path.parent / "art.png").read_bytes()


@pytest.fixture
def roomy_cluster():
    with local_cluster.two_node_cluster({"learner_node": 1}, {"rollout_node": 4}) as cluster:
        yield cluster


@pytest.mark.slow
def test_a_run_scaled_1_3_2_mid_run_ends_with_the_fixed_runs_image(roomy_cluster, tmp_path):
    """art-scale on a running job: workers join (with the current image) and leave between
    steps; per-request seeds make the run the same as one with a fixed 2 workers."""
    common = ["steps=30", "seed=3", "rollout.max_workers=3", "+rollout.resources.rollout_node=1"]
    elastic = _submit(roomy_cluster, tmp_path, "elastic", "rollout.num_workers=1", *common)
    up = _scale(roomy_cluster, 3)  # waits for the job's control, then for 3 serving workers
    assert up["serving"] == 3 and not up["done"], up
    down = _scale(roomy_cluster, 2)
    assert down["serving"] == 2 and down["step"] > up["step"], down
    summary, png = _finished(elastic, tmp_path, "elastic")
    per_step = summary["workers_per_step"]
    print("workers per step:", per_step)
    assert per_step[0] == 1 and 3 in per_step and per_step[-1] == 2, per_step
    last3 = len(per_step) - per_step[::-1].index(3)  # joiners come up one by one, then 3 -> 2
    assert per_step[:last3] == sorted(per_step[:last3]) and set(per_step[last3:]) == {2}
    assert summary["workers_lost"] == 0 and summary["worker_restarts"] == 0

    fixed = _submit(roomy_cluster, tmp_path, "fixed", "rollout.num_workers=2", *common)
    fixed_summary, fixed_png = _finished(fixed, tmp_path, "fixed")
    assert set(fixed_summary["workers_per_step"]) == {2}
    assert summary["rewards"] == fixed_summary["rewards"]
    assert png == fixed_png  # the same art.png, byte for byte


@pytest.fixture
def head_only_cluster():
    with local_cluster.two_node_cluster(
        {"learner_node": 1, "rollout_node": 1}, {"rollout_node": 2}, start_worker=False
    ) as cluster:
        yield cluster


@pytest.mark.slow
def test_workers_whose_node_arrives_later_join_a_running_run(head_only_cluster, tmp_path):
    """An autoscaling cluster: 3 workers asked, room for 1 until a second node joins; the run
    starts with rollout.min_workers=1 and the other two join once their node is up."""
    import time

    cluster = head_only_cluster
    job = _submit(
        cluster, tmp_path, "autoscale", "steps=40", "rollout.num_workers=3",
        "rollout.min_workers=1", "cluster.check_resources=false",
        "+rollout.resources.rollout_node=1",
    )  # fmt: skip
    status = _status(cluster)  # waits for the run's control to appear
    assert status["serving"] == 1 and status["starting"] == 2, status
    cluster["start_worker"]()  # the node the two others wait for
    deadline = time.monotonic() + 600
    while (status := _status(cluster))["serving"] < 3 and time.monotonic() < deadline:
        assert not status["done"], status
        time.sleep(2)
    summary, _ = _finished(job, tmp_path, "autoscale")
    per_step = summary["workers_per_step"]
    print("workers per step:", per_step)
    assert per_step[0] == 1 and per_step[-1] == 3 and per_step == sorted(per_step)
    assert len(set(summary["placement"].values())) == 1  # placed at the start: the head only


def _status(cluster) -> dict:
    command = [str(BIN / "art-scale"), "--address", cluster["dashboard"]]
    command += ["--python", sys.executable, "--wait", "300"]
    done = subprocess.run(command, env=cluster["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (status,) = json.loads(done.stdout)["runs"]
    return status
