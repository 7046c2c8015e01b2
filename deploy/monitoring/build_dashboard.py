"""Writes `art-dashboard.json`, the Grafana dashboard of an ART run (docs/monitoring.md).

    python deploy/monitoring/build_dashboard.py        # rewrites art-dashboard.json

Every training panel reads the `ray_art_*` series Ray exports (Prometheus data source
`${datasource}`), filtered by the dashboard's `run` variable; the serving row reads art-serve's
own `art_serve_*` series (its `/metrics`), filtered by the `task` variable. A test checks the
JSON is this script's output and that every metric of docs/monitoring.md has a panel.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("art-dashboard.json")
RUN = 'run=~"$run"'

# (title, unit, [(PromQL, legend)], width); rows of 24 grid units
PANELS = [
    (
        "Reward and accuracy",
        "none",
        [
            (f"ray_art_reward_mean{{{RUN}}}", "reward {{run}}"),
            (f"ray_art_accuracy{{{RUN}}}", "accuracy {{run}}"),
            (f"ray_art_val_accuracy{{{RUN}}}", "validation accuracy {{run}}"),
        ],
        12,
    ),
    (
        "Reward per function",
        "none",
        [
            (f"ray_art_reward_fn_mean{{{RUN}}}", "{{fn}} mean"),
            (f"ray_art_reward_fn_std{{{RUN}}}", "{{fn}} std"),
        ],
        12,
    ),
    ("Step", "none", [(f"ray_art_step{{{RUN}}}", "step {{run}}")], 6),
    (
        "Kept groups, rounds",
        "none",
        [
            (f"ray_art_kept_group_frac{{{RUN}}}", "kept group fraction"),
            (f"ray_art_generation_rounds{{{RUN}}}", "generation rounds"),
        ],
        6,
    ),
    (
        "Step time by phase",
        "s",
        [
            (f'ray_art_phase_seconds{{{RUN},phase!="step"}}', "{{phase}}"),
        ],
        12,
    ),
    (
        "Learner update (per replica)",
        "s",
        [
            (f"ray_art_learner_update_seconds{{{RUN}}}", "replica {{replica}}"),
        ],
        6,
    ),
    (
        "Learner peak memory",
        "bytes",
        [
            (f"ray_art_learner_peak_memory_bytes{{{RUN}}}", "replica {{replica}}"),
        ],
        6,
    ),
    (
        "Image version per worker",
        "none",
        [
            (f"ray_art_worker_image_version{{{RUN}}}", "worker {{worker}}"),
            (f"ray_art_learner_version{{{RUN}}}", "learner {{replica}}"),
        ],
        8,
    ),
    (
        "Worker throughput",
        "tps",
        [
            (f"ray_art_worker_tokens_per_second{{{RUN}}}", "worker {{worker}} (last chunk)"),
            (
                f"rate(ray_art_worker_completion_tokens_total{{{RUN}}}[1m])",
                "worker {{worker}} (1 min rate)",
            ),
        ],
        8,
    ),
    (
        "Requests served per worker",
        "none",
        [
            (f"ray_art_worker_requests_total{{{RUN}}}", "worker {{worker}}"),
        ],
        8,
    ),
    (
        "Workers, restarts, losses",
        "none",
        [
            (f"ray_art_num_workers{{{RUN}}}", "serving workers"),
            (f"ray_art_worker_restarts{{{RUN}}}", "restarts (run)"),
            (f"ray_art_workers_lost{{{RUN}}}", "lost for good"),
            (f"ray_art_worker_engine_starts_total{{{RUN}}}", "engine starts, worker {{worker}}"),
        ],
        8,
    ),
    (
        "Rollout / learner mismatch, staleness",
        "none",
        [
            (f"ray_art_mismatch_abs_mean{{{RUN}}}", "mean abs log-prob mismatch"),
            (f"ray_art_stale_completion_frac{{{RUN}}}", "stale completion fraction"),
        ],
        8,
    ),
    (
        "Skipped updates, grad norm, sync bytes",
        "none",
        [
            (f"ray_art_skipped_updates{{{RUN}}}", "skipped updates"),
            (f"ray_art_learner_grad_norm{{{RUN}}}", "grad norm, replica {{replica}}"),
            (f"ray_art_sync_bytes{{{RUN}}}", "broadcast bytes"),
        ],
        8,
    ),
]


TASK = 'task=~"$task"'
# The serving row (art-serve's /metrics, docs/monitoring.md "Serving"), same layout.
SERVING_PANELS = [
    (
        "Serving: requests per second by task and status",
        "reqps",
        [(f"sum by (task, status) (rate(art_serve_requests_total{{{TASK}}}[1m]))",
          "{{task}} {{status}}")],
        12,
    ),
    (
        "Serving: errors per second by task, status, backend",
        "reqps",
        [(f"sum by (task, status, backend) (rate(art_serve_errors_total{{{TASK}}}[5m]))",
          "{{task}} {{status}} {{backend}}")],
        12,
    ),
    (
        "Serving: tokens per second by task",
        "none",
        [
            (f"sum by (task) (rate(art_serve_prompt_tokens_total{{{TASK}}}[1m]))", "prompt {{task}}"),
            (f"sum by (task) (rate(art_serve_completion_tokens_total{{{TASK}}}[1m]))",
             "completion {{task}}"),
        ],
        8,
    ),
    (
        "Serving: latency p50 / p95",
        "s",
        [
            (f"histogram_quantile(0.5, sum by (task, le) (rate(art_serve_request_seconds_bucket{{{TASK}}}[5m])))",
             "p50 {{task}}"),
            (f"histogram_quantile(0.95, sum by (task, le) (rate(art_serve_request_seconds_bucket{{{TASK}}}[5m])))",
             "p95 {{task}}"),
        ],
        8,
    ),
    (
        "Serving: time to first token p50 / p95",
        "s",
        [
            (f"histogram_quantile(0.5, sum by (task, le) (rate(art_serve_time_to_first_token_seconds_bucket{{{TASK}}}[5m])))",
             "p50 {{task}}"),
            (f"histogram_quantile(0.95, sum by (task, le) (rate(art_serve_time_to_first_token_seconds_bucket{{{TASK}}}[5m])))",
             "p95 {{task}}"),
        ],
        8,
    ),
]  # fmt: skip


def panel(index: int, title: str, unit: str, targets: list, width: int, x: int, y: int):
    stacked = title.startswith("Step time")
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "stacking": {"mode": "normal" if stacked else "none"},
                    "fillOpacity": 40 if stacked else 0,
                },
            },
            "overrides": [],
        },
        "targets": [
            {"refId": chr(65 + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(i, title, unit, targets, width, x, y))
        x += width
    y += 8
    panels.append({"id": len(panels) + 1, "type": "row", "title": "Serving (art-serve)",
                   "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                   "panels": [], "targets": []})  # fmt: skip
    x, y = 0, y + 1
    for title, unit, targets, width in SERVING_PANELS:
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(len(panels), title, unit, targets, width, x, y))
        x += width
    return {
        "uid": "art-training",
        "title": "ART training",
        "tags": ["art", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "run",
                    "type": "query",
                    "label": "run",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(ray_art_step, run)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                },
                {
                    "name": "task",
                    "type": "query",
                    "label": "served task",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(art_serve_requests_total, task)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def main() -> None:
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
