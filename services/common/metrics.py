"""Metrics every service exports beside BentoML's HTTP ones (bentoml_service_request_total, ...).

gRPC calls do not pass through BentoML, so the gRPC server counts them itself (an interceptor in
grpc_server.py). Names follow Prometheus conventions: ``lesionsynth_`` prefix, base units, ``_total``
for counters.
"""

from __future__ import annotations

import bentoml

REJECTED = bentoml.metrics.Counter(
    name="lesionsynth_rejected_requests_total",
    documentation="Requests refused for bad input (4xx / INVALID_ARGUMENT), by service and transport.",
    labelnames=["service", "transport"],
)
MODEL = bentoml.metrics.Gauge(
    name="lesionsynth_model_info",
    documentation="1 for the model version a service is serving.",
    labelnames=["service", "model_version"],
)
GRPC_REQUESTS = bentoml.metrics.Counter(
    name="lesionsynth_grpc_requests_total",
    documentation="gRPC calls by service, method and status code.",
    labelnames=["service", "method", "code"],
)
GRPC_SECONDS = bentoml.metrics.Histogram(
    name="lesionsynth_grpc_request_duration_seconds",
    documentation="gRPC call latency by service and method.",
    labelnames=["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


def set_model(service: str, version: str) -> None:
    """Mark ``version`` as served (the previous version's series is cleared on reload)."""
    MODEL.clear()
    MODEL.labels(service=service, model_version=version).set(1)
