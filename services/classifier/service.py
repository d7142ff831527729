"""Classifier service: ``bentoml serve services.classifier.service:ClassifierService --port 3001``.

REST (BentoML): /classify (multipart image), /classify_batch (JSON, adaptive batching), /info, /reload.
gRPC lesionsynth.v1.Classifier on LESIONSYNTH_GRPC_PORT (50052) from the same process. Embedded ONNX
Runtime by default; Triton when TRITON_URL is set. Settings: services/classifier/settings.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field

from models.classifier.screening import serving_graph
from services.classifier.schemas import Classification, ClassifierInfo, ClassifyItem
from services.classifier.settings import ClassifierSettings
from services.common.errors import rest_errors
from services.common.http import install_middleware
from services.common.model_slot import preflight
from services.common.settings import process_settings

SETTINGS = process_settings(ClassifierSettings)
# Refuse to start (bentoml serve exits with the reason) when the model is missing or fails its sha256, or
# lacks the graph of LESIONSYNTH_CLASSIFIER_PRECISION (int8 on a folder exported without --int8).
serving_graph(preflight("classifier-onnx", SETTINGS.model, SETTINGS.model_store), SETTINGS.precision)
Items = Annotated[list[ClassifyItem], Field(min_length=1, max_length=SETTINGS.common.max_batch_items)]


@bentoml.service(
    name="lesionsynth-classifier",
    traffic={
        "timeout": SETTINGS.common.request_timeout_s,
        "max_concurrency": SETTINGS.common.max_concurrency,
    },
    # Several requests decode and infer at once (BentoML's default of 1 thread made REST /classify 0.56x
    # raw ONNX Runtime at 16 clients; 4 threads x 1 ORT thread each: 0.93x; docs/PERFORMANCE.md).
    threads=SETTINGS.threads,
)
class ClassifierService:
    def __init__(self) -> None:
        from services.classifier import grpc_servicer
        from services.classifier.handler import ClassifierHandler
        from services.common import jsonlog
        from services.common.grpc_server import GrpcServer

        jsonlog.configure()
        self.handler = ClassifierHandler(SETTINGS)
        self.grpc = GrpcServer(
            "classifier", SETTINGS.common, [grpc_servicer.registration(self.handler)]
        ).start()

    @bentoml.api
    @rest_errors
    def classify(self, image: Path) -> Classification:
        """P(positive) of one image and the decision at the model's validated threshold."""
        from dataclasses import asdict

        from models.errors import LesionsynthError
        from services.classifier.handler import parse_image
        from services.common.metrics import REJECTED

        try:
            pixels = parse_image(image.read_bytes(), SETTINGS.common)
        except LesionsynthError:
            REJECTED.labels(service="classifier", transport="rest").inc()
            raise
        return Classification(**asdict(self.handler.classify([pixels], "rest")[0]))

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    @rest_errors
    def classify_batch(self, items: Items) -> list[Classification]:
        """Many images as base64 JSON; concurrent requests are merged into one backend batch."""
        from dataclasses import asdict

        from models.errors import BackendUnavailable
        from services.common.errors import note_error

        try:
            results = self.handler.classify([item.pixels for item in items], "rest")
        except BackendUnavailable as exc:
            for item in items:  # every request merged into this batch gets the reason
                note_error(exc, item.error_slot)
            raise
        return [Classification(**asdict(r)) for r in results]

    @bentoml.api
    def info(self) -> ClassifierInfo:
        """Model version, positive label, threshold (and how it was chosen), input size, backend, precision
        (fp32 | int8) and the graph's sha256, limits."""
        return ClassifierInfo(**self.handler.info())

    @bentoml.api
    @rest_errors
    def reload(self) -> dict:
        """Load what LESIONSYNTH_CLASSIFIER names now; return old and new versions."""
        old, new = self.handler.slot.reload()
        return {"old_version": old, "new_version": new}

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.grpc.stop()
        self.handler.close()


install_middleware(
    ClassifierService,
    max_request_bytes=SETTINGS.common.max_request_bytes,
    api_token=SETTINGS.common.api_token,
)
