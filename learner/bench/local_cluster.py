"""A two-node Ray cluster on loopback, each node with its own object store.

What `art-bench` measures broadcasts on (objects then cross from one node's store to the
other's, as on a real cluster; on one node Ray hands them over through shared memory) and what
the two-node cluster test runs a job on. Every process it starts is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
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


def stop_processes(marker: str) -> None:
    """Stop the processes whose command line holds `marker`, and their children."""
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


def wait_for_nodes(gcs: str, env: dict, count: int, timeout_s: float = 120) -> dict:
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


@contextlib.contextmanager
def two_node_cluster(
    head_resources: dict,
    worker_resources: dict,
    num_cpus: int = 2,
    object_store_bytes: int = 300_000_000,
    dashboard: bool = True,
    start_worker: bool = True,
    metrics_port: int | None = None,
) -> Iterator[dict]:
    """Yields {"gcs", "dashboard", "env", "nodes", "start_worker"}; `env` is what a process
    joining it needs. With `start_worker=False` only the head runs until `start_worker()` is
    called (a node that arrives later, as an autoscaler's would)."""
    temp_dir = Path("/tmp") / f"art-cluster-{os.getpid()}-{free_port()}"  # short socket paths
    gcs_port, dash_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",  # loopback only
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    common = [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={object_store_bytes}",
    ]
    # The dashboard agent's HTTP port (what job submission talks to) is 52365 unless given:
    # another Ray on this machine (a test session's in-process one) would hold it, and the
    # node would come up without a job agent ("No available agent to submit job").
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}" for _ in range(2)]
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        f"--include-dashboard={'true' if dashboard else 'false'}",
        f"--temp-dir={temp_dir}",
        f"--resources={json.dumps(head_resources)}",
        *([f"--metrics-export-port={metrics_port}"] if metrics_port else []),
        agent_ports[0],
        *common,
    ]
    # Its own temp dir: two nodes on one machine must not share runtime-env folders, or the
    # worker node's agent deletes a job's working_dir under the driver's feet.
    worker = [
        str(BIN / "ray"),
        "start",
        f"--address=127.0.0.1:{gcs_port}",
        f"--temp-dir={temp_dir}-w",
        f"--resources={json.dumps(worker_resources)}",
        agent_ports[1],
        *common,
    ]

    def start() -> dict:
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=180)
        return wait_for_nodes(f"127.0.0.1:{gcs_port}", env, count=2)

    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        nodes = start() if start_worker else wait_for_nodes(f"127.0.0.1:{gcs_port}", env, 1)
        yield {
            "nodes": nodes,
            "gcs": f"127.0.0.1:{gcs_port}",
            "dashboard": f"http://127.0.0.1:{dash_port}",
            "env": env,
            "start_worker": start,
        }
    finally:
        stop_processes(str(temp_dir))  # also matches the worker's "<temp_dir>-w"
        stop_processes(f":{gcs_port}")
