"""deploy/monitoring: the Grafana dashboard is the generator's output and has a panel for every
metric docs/monitoring.md lists; the integration test checks exactly those metrics."""

import importlib.util
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"


def documented() -> set[str]:
    table = (REPO / "docs" / "monitoring.md").read_text().split("## The metrics", 1)[1]
    return set(re.findall(r"^\| `(art_\w+)`", table, flags=re.M))


def test_the_dashboard_is_up_to_date_and_covers_every_metric():
    spec = importlib.util.spec_from_file_location("build", MONITORING / "build_dashboard.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    committed = json.loads((MONITORING / "art-dashboard.json").read_text())
    assert committed == build.dashboard(), "run python deploy/monitoring/build_dashboard.py"
    exprs = " ".join(t["expr"] for p in committed["panels"] for t in p["targets"])
    metrics = documented()
    assert len(metrics) == 25
    missing = [m for m in sorted(metrics) if f"ray_{m}" not in exprs]
    assert not missing, missing
    ids = [p["id"] for p in committed["panels"]]
    assert len(ids) == len(set(ids))


def test_the_integration_test_checks_every_documented_metric():
    source = (REPO / "tests" / "integration" / "test_monitoring.py").read_text()
    checked = set(re.findall(r'"(art_\w+)"', source))
    counters = {"art_worker_requests", "art_worker_completion_tokens", "art_worker_engine_starts"}
    expected = (documented() - counters) | {f"{c}_total" for c in counters}
    assert expected <= checked, sorted(expected - checked)


def test_prometheus_follows_rays_service_discovery_file():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
