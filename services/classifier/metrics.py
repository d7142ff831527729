"""Domain metrics of the classifier service: scores and decisions, to watch drift, and the backend."""

from __future__ import annotations

import bentoml

PROBABILITY = bentoml.metrics.Histogram(
    name="lesionsynth_classifier_probability",
    documentation="P(positive) of every screened image; a shifted distribution is drift.",
    buckets=tuple(round(0.05 * i, 2) for i in range(1, 20)),
)
DECISIONS = bentoml.metrics.Counter(
    name="lesionsynth_classifier_decisions_total",
    documentation="Screening decisions at the model's validated threshold.",
    labelnames=["decision"],
)
INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="lesionsynth_classifier_inference_seconds",
    documentation="Backend time per call (preprocessed batch in, probabilities out).",
    labelnames=["backend"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BACKEND_ERRORS = bentoml.metrics.Counter(
    name="lesionsynth_classifier_backend_unavailable_total",
    documentation="Calls the backend could not answer (Triton down), by backend.",
    labelnames=["backend"],
)
IMAGES = bentoml.metrics.Counter(
    name="lesionsynth_classifier_images_total",
    documentation="Images screened, by transport (rest, grpc).",
    labelnames=["transport"],
)
PRECISION = bentoml.metrics.Gauge(
    name="lesionsynth_classifier_precision_info",
    documentation="1 for the graph precision the classifier serves (fp32: model.onnx, int8: model.int8.onnx).",
    labelnames=["precision"],
)


def set_precision(precision: str) -> None:
    """Mark ``precision`` as served (the previous one's series is cleared on reload)."""
    PRECISION.clear()
    PRECISION.labels(precision=precision).set(1)
