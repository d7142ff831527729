"""Synthesis service: ``bentoml serve services.synthesis.service:SynthesisService --port 3000``.

REST (BentoML): /synthesize (multipart image + mask -> PNG), /synthesize_batch (JSON, adaptive
batching), /synthesize_dicom (JSON: DICOM sources -> synthetic DICOM + SEG), /info, /reload, /preview;
the studio page GET /studio (services/synthesis/studio.py). gRPC lesionsynth.v1.Synthesis on
LESIONSYNTH_GRPC_PORT (50051), answered by the same process and model. Settings:
services/synthesis/settings.py (README table).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from models.spec import MAX_SEED
from services.common.errors import rest_errors
from services.common.http import install_middleware
from services.common.metrics import REJECTED
from services.common.model_slot import preflight
from services.common.payloads import BASE64
from services.common.settings import process_settings
from services.synthesis.schemas import (
    DicomItemResult,
    DicomSynthesisItem,
    ProposeMaskResult,
    SynthesisInfo,
    SynthesisItem,
    SynthesisItemResult,
)
from services.synthesis.settings import SynthesisSettings
from services.synthesis.studio import PAGES, Preview

SETTINGS = process_settings(SynthesisSettings)
#: A base64 field: declared as such and checked by pydantic (a bad one is 400, like the batch API's).
B64 = {"pattern": BASE64["pattern"], "json_schema_extra": BASE64}
#: Largest proposed mask (base64 characters) sent in the X-Mask-PNG header: HTTP clients cap a response's
#: headers (h11: 16 KiB in all); a larger one is left out and /propose_mask with X-Seed returns it.
MAX_MASK_HEADER = 8192
# Refuse to start (bentoml serve exits with the reason) when the model is missing or fails its sha256.
preflight("synthesizer", SETTINGS.model, SETTINGS.model_store)
Items = Annotated[list[SynthesisItem], Field(min_length=1, max_length=SETTINGS.common.max_batch_items)]
DicomItems = Annotated[
    list[DicomSynthesisItem], Field(min_length=1, max_length=SETTINGS.common.max_batch_items)
]


@bentoml.service(
    name="lesionsynth-synthesis",
    traffic={
        "timeout": SETTINGS.common.request_timeout_s,
        "max_concurrency": SETTINGS.common.max_concurrency,
    },
)
class SynthesisService:
    def __init__(self) -> None:
        from services.common import jsonlog
        from services.common.grpc_server import GrpcServer
        from services.synthesis import grpc_servicer
        from services.synthesis.handler import SynthesisHandler

        jsonlog.configure()
        self.handler = SynthesisHandler(SETTINGS)
        self.grpc = GrpcServer(
            "synthesis", SETTINGS.common, [grpc_servicer.registration(self.handler)]
        ).start()

    @bentoml.api
    @rest_errors
    def synthesize(
        self,
        image: Path,
        ctx: bentoml.Context,
        mask: Path = None,  # type: ignore[assignment]  # BentoML detects a file part only by the bare Path type
        seed: Annotated[int | None, Field(ge=0)] = None,
        steps: int | None = None,
        strength: float | None = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """Paint a synthetic lesion into ``mask`` of ``image``; the PNG's seed and model version are in
        the X-Seed and X-Model-Version headers. Without a mask part the server proposes one (as
        /propose_mask with the X-Seed seed gives again): X-Proposed-Mask: true, and X-Mask-PNG holds the
        proposed mask as base64 PNG (0/255) when it is small enough for a header (MAX_MASK_HEADER)."""
        from models.errors import LesionsynthError
        from services.synthesis.handler import parse_task

        try:
            mask_bytes = mask.read_bytes() if mask is not None else b""
            task = parse_task(image.read_bytes(), mask_bytes, seed, steps, strength, SETTINGS.common)
            self.handler.fill(task)  # no mask: a proposal
        except LesionsynthError:
            REJECTED.labels(service="synthesis", transport="rest").inc()
            raise
        result = self.handler.run([task], "rest")[0]
        ctx.response.headers.update(
            {
                "X-Seed": str(result.seed),
                "X-Steps": str(result.steps),
                "X-Strength": repr(result.strength),
                "X-Model-Version": result.model_version,
            }
        )
        if result.mask_png is not None:
            ctx.response.headers["X-Proposed-Mask"] = "true"
            encoded = base64.b64encode(result.mask_png).decode()
            if len(encoded) <= MAX_MASK_HEADER:  # else: POST /propose_mask with X-Seed gives it
                ctx.response.headers["X-Mask-PNG"] = encoded
        return result.png

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def synthesize_batch(self, items: Items) -> list[SynthesisItemResult]:
        """Many pairs as base64 JSON; concurrent requests are merged into shared UNet batches."""
        results = self.handler.run([item.task for item in items], "rest")
        return [
            SynthesisItemResult(
                image=base64.b64encode(r.png).decode(),
                seed=r.seed,
                steps=r.steps,
                strength=r.strength,
                model_version=r.model_version,
                mask=base64.b64encode(r.mask_png).decode() if r.mask_png is not None else None,
            )
            for r in results
        ]

    @bentoml.api
    @rest_errors
    def synthesize_dicom(self, items: DicomItems) -> list[DicomItemResult]:
        """/synthesize_batch for DICOM sources, answered as DICOM: each synthetic image is a new Secondary
        Capture series in its source's study (DERIVED\\SECONDARY, SYNTHETIC with model version and seed,
        the source in SourceImageSequence) with its mask as a DICOM SEG. The same synthesis as
        /synthesize_batch (same seed and settings: same pixels) and one audit row per image (its output
        sha256 is the DICOM's). Not merged with other requests: the items are sampled as sent."""
        results = self.handler.run([item.task for item in items], "rest")
        return [
            DicomItemResult(
                dicom=base64.b64encode(r.dicom or b"").decode(),
                seg=base64.b64encode(r.seg or b"").decode(),
                seed=r.seed,
                steps=r.steps,
                strength=r.strength,
                model_version=r.model_version,
            )
            for r in results
        ]

    @bentoml.api
    @rest_errors
    def propose_mask(
        self,
        image: Annotated[str, Field(description="Image bytes (PNG, JPEG, DICOM, ...), base64.", **B64)],
        seed: Annotated[
            int | None, Field(ge=0, le=MAX_SEED, description="Unset: drawn by the server and returned.")
        ] = None,
        roi_mask: Annotated[
            str | None, Field(description="Region-of-interest mask, base64: the proposal lies inside.", **B64)
        ] = None,
    ) -> ProposeMaskResult:
        """A proposed lesion mask: a real lesion shape of the shape bank placed in the imaged tissue (not
        the dark border or glare; inside roi_mask when given), away from the border; deterministic per
        seed (models/masks/)."""
        from models.data.images import encode_png
        from models.errors import LesionsynthError
        from services.synthesis.handler import parse_proposal

        try:
            task = parse_proposal(
                base64.b64decode(image),
                seed,
                base64.b64decode(roi_mask) if roi_mask else None,
                SETTINGS.common,
            )
        except LesionsynthError:
            REJECTED.labels(service="synthesis", transport="rest").inc()
            raise
        mask = self.handler.propose(task)
        png = encode_png(mask.astype("uint8") * 255)
        return ProposeMaskResult(mask=base64.b64encode(png).decode(), seed=task.seed)

    @bentoml.api
    @rest_errors
    def preview(
        self, image: Annotated[str, Field(description="Image bytes, base64.", json_schema_extra=BASE64)]
    ) -> Preview:
        """The image decoded as synthesis decodes it, as PNG: the studio shows DICOM through this."""
        from services.synthesis.studio import preview

        return preview(image, SETTINGS.common)

    @bentoml.api
    def info(self) -> SynthesisInfo:
        """Model version, working resolution, sampler defaults and limits."""
        return SynthesisInfo(**self.handler.info())

    @bentoml.api
    @rest_errors
    def reload(self) -> dict:
        """Load what LESIONSYNTH_SYNTHESIZER names now (e.g. a newer "latest"); return old and new versions."""
        old, new = self.handler.slot.reload()
        return {"old_version": old, "new_version": new}

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.grpc.stop()
        self.handler.close()


install_middleware(
    SynthesisService,
    max_request_bytes=SETTINGS.common.max_request_bytes,
    api_token=SETTINGS.common.api_token,
    pages=PAGES,  # GET /studio (services/synthesis/studio.py)
)
