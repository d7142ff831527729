"""REST payloads of the synthesis batch API and its DICOM form, /synthesize_dicom (JSON; files as base64).

Each item is decoded and checked by its validator, i.e. per HTTP request and BEFORE adaptive batching
merges requests: one client's bad image is that client's 400 and never fails another client's batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from models.diffusion.sampler_settings import MAX_SEED, SamplerSettings
from models.errors import LesionsynthError
from services.common.errors import content_error
from services.common.metrics import REJECTED
from services.common.payloads import BASE64, b64, optional_field
from services.common.settings import process_settings
from services.synthesis.handler import SynthesisTask, fill_proposal, parse_dicom_task, parse_task
from services.synthesis.settings import SynthesisSettings


class SynthesisItem(BaseModel):
    image: str = Field(
        description="Image bytes (PNG, JPEG, BMP, TIFF or WebP), base64; 8-bit, at least 32 px a side.",
        json_schema_extra=BASE64,
    )
    mask: str | None = Field(
        None,
        description="Mask of the same size, base64; pixels > 127 are inside. Null: the server proposes one "
        "(as /propose_mask with this item's seed) and returns it in the result's mask.",
        json_schema_extra=BASE64,
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Unset: drawn by the server and returned.")
    steps: int | None = optional_field(SamplerSettings, "steps")
    strength: float | None = optional_field(SamplerSettings, "strength")  # 0 refused by parse_task
    _task: SynthesisTask | None = PrivateAttr(None)
    #: How the item is decoded and checked (handler.parse_task; parse_dicom_task for DICOM results).
    parser: ClassVar[Callable[..., SynthesisTask]] = staticmethod(parse_task)

    @model_validator(mode="after")
    def decode(self) -> SynthesisItem:
        try:
            self._task = self.parser(
                b64("image", self.image),
                b64("mask", self.mask) if self.mask is not None else b"",
                self.seed,
                self.steps,
                self.strength,
                process_settings(SynthesisSettings).common,
            )
            if self._task.mask is None:  # a proposal, per request (before batching merges requests)
                fill_proposal(self._task)
        except LesionsynthError as exc:  # content the schema allows: 422 with the kind
            REJECTED.labels(service="synthesis", transport="rest").inc()
            raise content_error(exc) from None
        except ValueError as exc:  # not base64: the schema's pattern says so too (400)
            REJECTED.labels(service="synthesis", transport="rest").inc()
            raise ValueError(str(exc)) from None
        return self

    @property
    def task(self) -> SynthesisTask:
        assert self._task is not None
        return self._task


class SynthesisItemResult(BaseModel):
    image: str = Field(description="The synthesized image, PNG, base64.", json_schema_extra=BASE64)
    seed: int
    steps: int
    strength: float
    model_version: str
    mask: str | None = Field(
        None,
        description="The proposed mask (PNG 0/255, base64) when the item had none; null otherwise.",
        json_schema_extra=BASE64,
    )


class DicomSynthesisItem(SynthesisItem):
    """A /synthesize_dicom item: as a /synthesize_batch item, from a DICOM source."""

    image: str = Field(
        description="The source image, a DICOM Part 10 file (one frame), base64: the synthetic image joins "
        "its study as a new series. Any other format is refused (422): ask /synthesize_batch for a PNG.",
        json_schema_extra=BASE64,
    )
    mask: str | None = Field(
        None,
        description="Mask of the same size (PNG, ..., a DICOM image or SEG), base64; pixels > 127 are "
        "inside. Null: the server proposes one (as /propose_mask with this item's seed); the SEG holds it.",
        json_schema_extra=BASE64,
    )
    parser: ClassVar[Callable[..., SynthesisTask]] = staticmethod(parse_dicom_task)


class DicomItemResult(BaseModel):
    dicom: str = Field(
        description="The synthetic image as DICOM (base64): a Secondary Capture instance of a new series "
        "in the source's study; ImageType DERIVED\\SECONDARY, ConversionType SYN, descriptions saying "
        "SYNTHETIC with the model version and seed, the source in SourceImageSequence.",
        json_schema_extra=BASE64,
    )
    seg: str = Field(
        description="The mask painted into (the given or proposed one) as a DICOM SEG referencing the "
        "synthetic image, base64.",
        json_schema_extra=BASE64,
    )
    seed: int
    steps: int
    strength: float
    model_version: str


class ProposeMaskResult(BaseModel):
    mask: str = Field(
        description="The proposed mask, PNG 0/255 of the image's size, base64.", json_schema_extra=BASE64
    )
    seed: int


class SynthesisInfo(BaseModel):
    model_version: str
    resolution: int
    default_steps: int
    default_strength: float
    max_steps: int
    max_pixels: int
    max_request_bytes: int
    max_batch_items: int
