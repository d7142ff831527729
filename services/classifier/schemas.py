"""REST payloads of the classifier batch API (JSON; images as base64).

Images are decoded in the item validator, per HTTP request and before adaptive batching merges requests,
so one client's bad image is that client's 400 and never fails another client's batch.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from models.errors import LesionsynthError
from services.classifier.handler import parse_image
from services.classifier.settings import ClassifierSettings
from services.common.errors import content_error, request_error_slot
from services.common.metrics import REJECTED
from services.common.payloads import BASE64, b64
from services.common.settings import process_settings


class ClassifyItem(BaseModel):
    image: str = Field(
        description="Image bytes (PNG, JPEG, BMP, TIFF, WebP or DICOM), base64; 8-bit (DICOM: any bit depth, "
        "one frame), at least 32 px a side.",
        json_schema_extra=BASE64,
    )
    _pixels: np.ndarray | None = PrivateAttr(None)
    #: The request's error slot (services.common.errors): the batch may run outside the request's context.
    _error_slot: dict | None = PrivateAttr(None)

    @model_validator(mode="after")
    def decode(self) -> ClassifyItem:
        self._error_slot = request_error_slot()
        try:
            self._pixels = parse_image(b64("image", self.image), process_settings(ClassifierSettings).common)
        except LesionsynthError as exc:  # content the schema allows: 422 with the kind
            REJECTED.labels(service="classifier", transport="rest").inc()
            raise content_error(exc) from None
        except ValueError as exc:  # not base64: the schema's pattern says so too (400)
            REJECTED.labels(service="classifier", transport="rest").inc()
            raise ValueError(str(exc)) from None
        return self

    @property
    def error_slot(self) -> dict | None:
        return self._error_slot

    @property
    def pixels(self) -> np.ndarray:
        assert self._pixels is not None
        return self._pixels


class Classification(BaseModel):
    probability: float = Field(description="P(positive class), in [0, 1].")
    positive: bool = Field(description="probability >= threshold.")
    threshold: float
    model_version: str
    positive_label: str


class ClassifierInfo(BaseModel):
    model_version: str
    positive_label: str
    threshold: float
    threshold_rule: str
    image_size: int
    backend: str
    precision: str = Field(description="The graph scoring: fp32 (model.onnx) or int8 (model.int8.onnx).")
    graph_sha256: str = Field(description="sha256 of that graph file, as the model card lists it.")
    max_pixels: int
    max_request_bytes: int
    max_batch_items: int
