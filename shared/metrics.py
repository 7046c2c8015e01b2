"""Training and serving figures as metrics (the Ray dashboard's Metrics view, Prometheus and
Grafana: `deploy/monitoring/`, `docs/monitoring.md`): one helper for both sides.

Every figure is a metric named `art_*` (Prometheus shows it as `ray_art_*`), tagged with the
run id and, where it applies, the replica or worker index. The process that knows a figure
records it: the driver the step's figures, each learner replica its update, each rollout worker
what it serves. The metric classes come from the caller (`ray.util.metrics`: `shared` imports
no Ray), and recording does nothing while `active()` is false (a learner built in a test,
outside Ray).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


class Metrics:
    """Gauges and counters made on first use, each with fixed tags (`run`, ...)."""

    def __init__(self, backend: ModuleType, active: Callable[[], bool], **tags: str):
        self.backend, self.active = backend, active  # ray.util.metrics, ray.is_initialized
        self.tags = {k: str(v) for k, v in tags.items()}
        self._made: dict[str, object] = {}

    def _metric(self, kind: str, name: str, description: str, extra: tuple[str, ...]):
        if name not in self._made:
            cls = {"gauge": self.backend.Gauge, "counter": self.backend.Counter}[kind]
            keys = tuple(self.tags) + extra
            self._made[name] = cls(name, description, tag_keys=keys).set_default_tags(self.tags)
        return self._made[name]

    def set(self, name: str, value: float, description: str = "", **tags: str) -> None:
        if self.active():
            metric = self._metric("gauge", name, description, tuple(tags))
            metric.set(float(value), tags={k: str(v) for k, v in tags.items()} or None)

    def inc(self, name: str, value: float = 1.0, description: str = "", **tags: str) -> None:
        if self.active() and value > 0:
            metric = self._metric("counter", name, description, tuple(tags))
            metric.inc(float(value), tags={k: str(v) for k, v in tags.items()} or None)
