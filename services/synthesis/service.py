"""Synthesis service: ``bentoml serve services.synthesis.service:SynthesisService --port 3000``.

REST (BentoML): /synthesize (multipart image + mask -> PNG), /synthesize_batch (JSON, adaptive
batching), /info, /reload. gRPC lesionsynth.v1.Synthesis on LESIONSYNTH_GRPC_PORT (50051), answered by
the same process and model. Settings: services/synthesis/settings.py (README table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from services.common.errors import rest_errors
from services.common.http import install_middleware
from services.common.metrics import REJECTED
from services.common.model_slot import preflight
from services.common.settings import process_settings
from services.synthesis.schemas import SynthesisInfo, SynthesisItem, SynthesisItemResult
from services.synthesis.settings import SynthesisSettings

SETTINGS = process_settings(SynthesisSettings)
# Refuse to start (bentoml serve exits with the reason) when the model is missing or fails its sha256.
preflight("synthesizer", SETTINGS.model, SETTINGS.model_store)
Items = Annotated[list[SynthesisItem], Field(min_length=1, max_length=SETTINGS.common.max_batch_items)]


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
        mask: Path,
        ctx: bentoml.Context,
        seed: Annotated[int | None, Field(ge=0)] = None,
        steps: int | None = None,
        strength: float | None = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """Paint a synthetic lesion into ``mask`` of ``image``; the PNG's seed and model version are in
        the X-Seed and X-Model-Version headers."""
        from models.errors import LesionsynthError
        from services.synthesis.handler import parse_task

        try:
            task = parse_task(image.read_bytes(), mask.read_bytes(), seed, steps, strength, SETTINGS.common)
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
        return result.png

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def synthesize_batch(self, items: Items) -> list[SynthesisItemResult]:
        """Many pairs as base64 JSON; concurrent requests are merged into shared UNet batches."""
        import base64

        results = self.handler.run([item.task for item in items], "rest")
        return [
            SynthesisItemResult(
                image=base64.b64encode(r.png).decode(),
                seed=r.seed,
                steps=r.steps,
                strength=r.strength,
                model_version=r.model_version,
            )
            for r in results
        ]

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
    SynthesisService, max_request_bytes=SETTINGS.common.max_request_bytes, api_token=SETTINGS.common.api_token
)
