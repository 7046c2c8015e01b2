"""Rollout figures through Ray's metrics (`ray.util.metrics`), tagged with the run id and the
worker index: each worker records what it serves (the learner side has its own copy of this
helper, `learner/metrics.py`: the two packages never import each other). Outside Ray
recording does nothing.
"""

from __future__ import annotations


class RayMetrics:
    """Gauges and counters made on first use, each with fixed tags (`run`, ...)."""

    def __init__(self, **tags: str):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._made: dict[str, object] = {}

    def _metric(self, kind: str, name: str, description: str, extra: tuple[str, ...]):
        if name not in self._made:
            from ray.util import metrics

            cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind]
            keys = tuple(self.tags) + extra
            self._made[name] = cls(name, description, tag_keys=keys).set_default_tags(self.tags)
        return self._made[name]

    @staticmethod
    def active() -> bool:
        import ray

        return ray.is_initialized()

    def set(self, name: str, value: float, description: str = "", **tags: str) -> None:
        if self.active():
            metric = self._metric("gauge", name, description, tuple(tags))
            metric.set(float(value), tags={k: str(v) for k, v in tags.items()} or None)

    def inc(self, name: str, value: float = 1.0, description: str = "", **tags: str) -> None:
        if self.active() and value > 0:
            metric = self._metric("counter", name, description, tuple(tags))
            metric.inc(float(value), tags={k: str(v) for k, v in tags.items()} or None)
