"""The gateway's own metrics, in Prometheus' text format (`GET /metrics`), labelled by task:
requests by status, errors by status and backend, prompt and completion tokens, time to the
first token and latency histograms. Small on purpose: counters and histograms in memory, one
set per gateway process (each Ray Serve replica has its own; Prometheus sums them)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escape = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
    return (
        "{"
        + ",".join(f'{n}="{str(v).translate(escape)}"' for n, v in zip(names, values, strict=True))
        + "}"
    )


class Counter:
    def __init__(self, name: str, help_: str, labels: tuple[str, ...]):
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self.values[tuple(values)] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for values, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, values)} {v:g}")
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, labels: tuple[str, ...], buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labels, self.buckets = name, help_, labels, tuple(buckets)
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, value: float, *values: str) -> None:
        key = tuple(values)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        names = (*self.labels, "le")
        for key, counts in sorted(self.counts.items()):
            for bound, n in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
                lines.append(f"{self.name}_bucket{_labels(names, (*key, bound))} {n}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {counts[-1]}")
        return lines


class GatewayMetrics:
    """Every figure the gateway keeps (thread-safe: Ray Serve may call from threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = Counter(
            "art_serve_requests_total", "requests answered, by task and HTTP status",
            ("task", "status"),
        )  # fmt: skip
        self.errors = Counter(
            "art_serve_errors_total", "requests that failed, by task, status and backend",
            ("task", "status", "backend"),
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "art_serve_prompt_tokens_total", "prompt tokens (the engine's count)", ("task",)
        )
        self.completion_tokens = Counter(
            "art_serve_completion_tokens_total", "completion tokens (the engine's)", ("task",)
        )
        self.ttft = Histogram(
            "art_serve_time_to_first_token_seconds", "seconds to the first streamed token",
            ("task",),
        )  # fmt: skip
        self.latency = Histogram(
            "art_serve_request_seconds", "seconds from request to the answer's end", ("task",)
        )

    def record(self, task: str, status: int, seconds: float, backend: str = "",
               usage: dict | None = None, ttft: float | None = None) -> None:  # fmt: skip
        with self.lock:
            self.requests.inc(task, str(status))
            if status >= 400:
                self.errors.inc(task, str(status), backend)
            if usage:
                self.prompt_tokens.inc(task, amount=float(usage.get("prompt_tokens") or 0))
                self.completion_tokens.inc(task, amount=float(usage.get("completion_tokens") or 0))
            if ttft is not None:
                self.ttft.observe(ttft, task)
            self.latency.observe(seconds, task)

    def render(self) -> str:
        with self.lock:
            parts = [self.requests, self.errors, self.prompt_tokens, self.completion_tokens,
                     self.ttft, self.latency]  # fmt: skip
            return "\n".join(line for p in parts for line in p.render()) + "\n"
