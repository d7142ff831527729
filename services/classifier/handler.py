"""What the REST and gRPC adapters of the classifier service share: decode, score, decide, count.

The ML is ``models.classifier.screening.ScreeningModel`` over a backend: embedded ONNX Runtime by
default, Triton when TRITON_URL is set; LESIONSYNTH_CLASSIFIER_PRECISION picks the folder's FP32 or INT8
graph for either (and for the fallback). With Triton down, calls fail with BackendUnavailable (503 /
UNAVAILABLE) unless LESIONSYNTH_FALLBACK_TO_ONNXRUNTIME is on; the next call tries Triton again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.classifier.screening import (
    OnnxRuntimeBackend,
    ScreeningModel,
    serving_graph,
    triton_model_name,
)
from models.data.images import decode_image
from models.errors import BackendUnavailable, ParameterError
from models.export.serving import read_card
from services.classifier import metrics
from services.classifier.settings import ClassifierSettings
from services.common.metrics import set_model
from services.common.model_slot import ModelSlot
from services.common.settings import CommonSettings

log = logging.getLogger("lesionsynth.services.classifier")


@dataclass
class ClassifierResult:
    probability: float
    positive: bool
    threshold: float
    model_version: str
    positive_label: str


def parse_image(data: bytes, limits: CommonSettings, role: str = "image") -> np.ndarray:
    """Decode one request image under the service's limits (pixel count, smallest side, pixel format)."""
    if not data:
        raise ParameterError(f"{role} is missing (empty)")
    return decode_image(data, max_pixels=limits.max_pixels, min_side=limits.min_image_side, role=role)


class ClassifierHandler:
    def __init__(self, settings: ClassifierSettings):
        self.settings = settings
        #: Embedded ORT twin of the served model, built on the first Triton outage (per model version).
        self._fallback: ScreeningModel | None = None
        self.slot = ModelSlot(
            "classifier-onnx",
            settings.model,
            settings.model_store,
            load=self._load,
            version_of=lambda model: model.model_version,
            on_swap=self._on_swap,
        )
        self.slot.watch(settings.reload_interval_s)

    def _load(self, folder: Path) -> ScreeningModel:
        s = self.settings
        card = read_card(folder)
        # Refuses a precision the folder lacks (ModelFolderError naming its version) before any backend.
        graph, _ = serving_graph(folder, s.precision, card)
        if s.triton_url:
            from models.classifier.triton_backend import TritonBackend

            name = s.triton_model or triton_model_name(card, s.precision)
            backend = TritonBackend(s.triton_url, name, timeout_s=s.triton_timeout_s)
        else:
            backend = OnnxRuntimeBackend(graph, threads=s.ort_threads)
        return ScreeningModel(folder, backend, precision=s.precision)

    @staticmethod
    def _on_swap(model: ScreeningModel) -> None:
        set_model("classifier", model.model_version)
        metrics.set_precision(model.precision)

    @property
    def model(self) -> ScreeningModel:
        return self.slot.model

    @property
    def backend_name(self) -> str:
        return self.model.backend.name

    def info(self) -> dict:
        model, common = self.model, self.settings.common
        return {
            "model_version": model.model_version,
            "positive_label": model.positive_label,
            "threshold": model.threshold,
            "threshold_rule": model.threshold_rule,
            "image_size": model.size,
            "backend": model.backend.name,
            "precision": model.precision,
            "graph_sha256": model.graph_sha256,
            "max_pixels": common.max_pixels,
            "max_request_bytes": common.max_request_bytes,
            "max_batch_items": common.max_batch_items,
        }

    def ready(self) -> bool:
        return self.model.backend.ready() or self.settings.fallback_to_onnxruntime

    def classify(self, images: list[np.ndarray], transport: str) -> list[ClassifierResult]:
        model = self.model
        started = time.perf_counter()
        try:
            probabilities = model.probabilities(images)
            backend = model.backend.name
        except BackendUnavailable:
            metrics.BACKEND_ERRORS.labels(backend=model.backend.name).inc()
            if not self.settings.fallback_to_onnxruntime:
                raise
            log.warning("Triton unavailable; answering from embedded ONNX Runtime (fallback on)")
            if self._fallback is None or self._fallback.model_version != model.model_version:
                backend_ort = OnnxRuntimeBackend(model.graph_path, threads=self.settings.ort_threads)
                # model.graph_path is the served precision's graph: the fallback scores with the same one.
                self._fallback = ScreeningModel(
                    model.folder, backend_ort, verify=False, precision=model.precision
                )
            probabilities = self._fallback.probabilities(images)
            backend = self._fallback.backend.name
        metrics.INFERENCE_SECONDS.labels(backend=backend).observe(time.perf_counter() - started)
        metrics.IMAGES.labels(transport=transport).inc(len(images))
        results = []
        for p in probabilities:
            positive = bool(p >= model.threshold)
            metrics.PROBABILITY.observe(float(p))
            metrics.DECISIONS.labels(decision="positive" if positive else "negative").inc()
            results.append(
                ClassifierResult(
                    float(p), positive, model.threshold, model.model_version, model.positive_label
                )
            )
        return results

    def close(self) -> None:
        self.slot.close()
        self.model.backend.close()
