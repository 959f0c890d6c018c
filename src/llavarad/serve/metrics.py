"""Prometheus metrics of the service, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from typing import Any

__all__ = ["ServeMetrics"]


class ServeMetrics:
    """Requests, latency, batch sizes, queue depth and errors by kind, for ``GET /metrics``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("llavarad_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("llavarad_request_seconds", "Time from request start to answer, by endpoint.",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch_size = Histogram("llavarad_batch_size", "Images per model call (dynamic batching).",
                                    registry=self.registry, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.batch_seconds = Histogram("llavarad_batch_seconds", "Seconds per model call.", registry=self.registry,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.queue_depth = Gauge("llavarad_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self.errors = Counter("llavarad_errors", "Refused or failed requests, by error code.", ["code"],
                              registry=self.registry)
        self.cancelled = Counter("llavarad_cancelled", "Requests given up before the model ran them, by reason "
                                 "(disconnect, deadline).", ["reason"], registry=self.registry)
        self.ready = Gauge("llavarad_ready", "1 once the model is loaded and warmed.", registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def set_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: Any) -> float:
        """A sample's current value (0 when absent); for tests and the benchmark."""
        got = self.registry.get_sample_value(name, labels or None)
        return float(got) if got is not None else 0.0
