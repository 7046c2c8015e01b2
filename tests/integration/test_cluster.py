"""A real two-node Ray cluster on loopback, the job submitted the way `make cluster-train` does."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(roots: set[int]) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, grew = set(roots), True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def _stop_cluster(marker: str) -> None:
    """Stop only this cluster's processes (not other Ray instances on the machine)."""
    roots = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="ignore"):
                roots.add(int(cmdline.parent.name))
        except OSError:
            continue
    pids = _descendants(roots) - {os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1)


def _wait_for_nodes(gcs: str, env: dict, count: int, timeout_s: float = 120) -> dict:
    """`ray start` returns before the node has registered: poll until `count` are alive."""
    code = (
        "import json, time, ray\n"
        f"ray.init(address='{gcs}', log_to_driver=False)\n"
        f"deadline = time.time() + {timeout_s}\n"
        "while True:\n"
        "    alive = {n['NodeID']: sorted(n['Resources']) for n in ray.nodes() if n['Alive']}\n"
        f"    if len(alive) >= {count} or time.time() > deadline: break\n"
        "    time.sleep(1)\n"
        "print(json.dumps(alive))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster(tmp_path):
    temp_dir = Path("/tmp") / f"art-cluster-{os.getpid()}"  # short: Ray socket paths are limited
    gcs_port, dash_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",  # loopback-only test cluster
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=300000000"]
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        '--resources={"learner_node": 1}',
        *common,
    ]
    # Its own temp dir: two nodes on one machine must not share runtime-env folders, or the
    # worker node's agent deletes the job's working_dir under the driver's feet.
    worker = [
        str(BIN / "ray"),
        "start",
        f"--address=127.0.0.1:{gcs_port}",
        f"--temp-dir={temp_dir}-w",
        '--resources={"rollout_node": 2}',
        *common,
    ]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=180)
        nodes = _wait_for_nodes(f"127.0.0.1:{gcs_port}", env, count=2)
        yield {
            "nodes": nodes,
            "gcs": f"127.0.0.1:{gcs_port}",
            "dashboard": f"http://127.0.0.1:{dash_port}",
            "env": env,
        }
    finally:
        _stop_cluster(str(temp_dir))  # also matches the worker's "<temp_dir>-w"
        _stop_cluster(f":{gcs_port}")


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
