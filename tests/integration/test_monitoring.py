"""Ray dashboard monitoring for real: a run on a local Ray head with a known metrics port,
then its `art_*` metrics read from the Prometheus endpoint, and the actors with their reprs
read from the dashboard's own HTTP API during the run."""

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from learner.bench import local_cluster

BIN = Path(sys.executable).parent
# Every metric docs/monitoring.md lists, by the process that records it.
DRIVER = [
    "art_step", "art_reward_mean", "art_accuracy", "art_kept_group_frac",
    "art_generation_rounds", "art_phase_seconds", "art_worker_restarts",
    "art_skipped_updates", "art_mismatch_abs_mean", "art_stale_completion_frac",
    "art_sync_bytes", "art_num_workers", "art_workers_lost", "art_val_accuracy",
    "art_reward_fn_mean", "art_reward_fn_std",
]  # fmt: skip
LEARNER = [
    "art_learner_update_seconds", "art_learner_grad_norm", "art_learner_version",
    "art_learner_peak_memory_bytes",
]  # fmt: skip
WORKER = [
    "art_worker_image_version", "art_worker_requests_total",
    "art_worker_completion_tokens_total", "art_worker_tokens_per_second",
    "art_worker_engine_starts_total",
]  # fmt: skip
SAMPLE = re.compile(r"^ray_(art_\w+)\{(.*)\} (\S+)$")


def scrape(port: int) -> list[tuple[str, dict, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            tags = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            out.append((match.group(1), tags, float(match.group(3))))
    return out


def value(samples, name: str, **tags) -> list[float]:
    return [v for n, t, v in samples if n == name and all(t.get(k) == w for k, w in tags.items())]


@pytest.fixture
def monitored_cluster():
    port = local_cluster.free_port()
    with local_cluster.two_node_cluster(
        {"learner_node": 1}, {}, num_cpus=4, start_worker=False, metrics_port=port
    ) as cluster:
        yield {**cluster, "metrics_port": port}


@pytest.mark.slow
def test_a_runs_metrics_and_actors_are_on_the_dashboard(monitored_cluster, tmp_path):
    cluster = monitored_cluster
    outputs = tmp_path / "outputs"
    job = subprocess.Popen(
        [
            str(BIN / "art-submit"), "--address", cluster["dashboard"], "--wait",
            "--timeout", "900", "--python", sys.executable, "--",
            "cluster=existing", "steps=3", "eval.every=3", "eval.val_size=4",
            "rollout.num_workers=2", "rollout.num_cpus_per_worker=0.5",
            "learner.num_cpus=0.5", f"output_dir={outputs}",
            f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"logging.artifact_location={tmp_path}/artifacts",
        ],
        env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # the dashboard's own API during the run: the actors and what their Repr column shows
    reprs, deadline = {}, time.monotonic() + 600
    api = f"{cluster['dashboard']}/api/v0/actors?detail=1&limit=100"
    while len(reprs) < 3 and time.monotonic() < deadline and job.poll() is None:
        try:
            listed = json.loads(urllib.request.urlopen(api, timeout=10).read())
            reprs = {
                a["name"]: a.get("repr_name", "")
                for a in listed["data"]["result"]["result"]
                if a["state"] == "ALIVE" and a["name"] in ("learner", *WORKER_NAMES)
            }
        except OSError:
            pass
        time.sleep(1)
    out, _ = job.communicate(timeout=900)
    assert job.returncode == 0, out[-3000:]
    print("reprs:", reprs)
    assert reprs.get("learner", "").startswith("learner (art, run ")
    for i in (0, 1):
        assert reprs.get(f"rollout-worker-{i}", "").startswith(f"rollout-worker-{i} (hf engine")

    (summary_path,) = outputs.glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    run = summary_path.parent.name
    deadline, samples = time.monotonic() + 60, []
    while time.monotonic() < deadline:  # the agent exports every few seconds
        samples = [s for s in scrape(cluster["metrics_port"]) if s[1].get("run") == run]
        if value(samples, "art_step") == [3.0] and value(samples, "art_val_accuracy"):
            break
        time.sleep(2)
    for name, tags, v in sorted(samples, key=lambda s: (s[0], sorted(s[1].items()))):
        shown = {k: w for k, w in tags.items() if k in ("run", "worker", "replica", "phase")}
        print(f"ray_{name}{shown} {v}")
    names = {n for n, _, _ in samples}
    missing = [n for n in DRIVER + LEARNER + WORKER if n not in names]
    assert not missing, missing
    assert value(samples, "art_step") == [3.0]
    assert value(samples, "art_worker_restarts") == [0.0]
    assert value(samples, "art_reward_mean") == [pytest.approx(summary["rewards"][-1])]
    # the task's own reward is its one reward function (no overlong shaping: the same mean)
    assert value(samples, "art_reward_fn_mean", fn="synthetic") == [
        pytest.approx(summary["rewards"][-1])
    ]
    assert value(samples, "art_num_workers") == [2.0]
    versions = {t["worker"]: v for n, t, v in samples if n == "art_worker_image_version"}
    assert versions == {"0": summary["image_version"], "1": summary["image_version"]}
    assert summary["image_version"] == 3  # one new image per step
    assert value(samples, "art_learner_version", replica="0") == [3.0]
    phases = {t["phase"] for n, t, _ in samples if n == "art_phase_seconds"}
    assert phases == {"rollout", "update", "broadcast", "step"}
    requests = sum(value(samples, "art_worker_requests_total"))
    assert requests >= 3 * 8  # every prompt of every step (and the validation ones)


WORKER_NAMES = ("rollout-worker-0", "rollout-worker-1")
