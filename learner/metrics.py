"""The learner side's metrics (driver and learner replicas): `shared.metrics.Metrics` on Ray's
metric classes."""

from __future__ import annotations

import ray
from ray.util import metrics

from shared.metrics import Metrics


def ray_metrics(**tags: str) -> Metrics:
    return Metrics(metrics, ray.is_initialized, **tags)
