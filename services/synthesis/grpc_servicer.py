"""gRPC adapter: lesionsynth.v1.Synthesis over the shared SynthesisHandler."""

from __future__ import annotations

from models.data.images import encode_png
from models.errors import LesionsynthError, ParameterError
from services.common.errors import grpc_errors
from services.common.metrics import REJECTED
from services.common.settings import CommonSettings
from services.grpc_stubs import synthesis_pb2, synthesis_pb2_grpc
from services.synthesis.handler import SynthesisHandler, SynthesisResult, parse_proposal, parse_task

SERVICE_NAME = synthesis_pb2.DESCRIPTOR.services_by_name["Synthesis"].full_name


def _task(request: synthesis_pb2.SynthesizeRequest, limits: CommonSettings, role: str = ""):
    """The checked task; an empty mask stays None (the servicer fills a proposal)."""
    return parse_task(
        request.image,
        request.mask,
        request.seed if request.HasField("seed") else None,
        request.steps if request.HasField("steps") else None,
        request.strength if request.HasField("strength") else None,
        limits,
        role,
    )


def _response(result: SynthesisResult) -> synthesis_pb2.SynthesizeResponse:
    return synthesis_pb2.SynthesizeResponse(
        image_png=result.png,
        model_version=result.model_version,
        seed=result.seed,
        steps=result.steps,
        strength=result.strength,
        mask_png=result.mask_png or b"",
    )


class SynthesisServicer(synthesis_pb2_grpc.SynthesisServicer):
    def __init__(self, handler: SynthesisHandler):
        self.handler = handler
        self.limits = handler.settings.common
        self.max_items = handler.settings.common.max_batch_items

    @grpc_errors
    def Synthesize(self, request, context):
        try:
            task = self.handler.fill(_task(request, self.limits))
        except LesionsynthError:
            REJECTED.labels(service="synthesis", transport="grpc").inc()
            raise
        return _response(self.handler.run([task], "grpc")[0])

    @grpc_errors
    def SynthesizeBatch(self, request, context):
        try:
            if not request.items:
                raise ParameterError("items is empty: send at least one image + mask")
            if len(request.items) > self.max_items:
                raise ParameterError(
                    f"items has {len(request.items)} pairs; at most {self.max_items} per call"
                )
            tasks = [_task(item, self.limits, f"items[{i}]") for i, item in enumerate(request.items)]
            tasks = [self.handler.fill(task) for task in tasks]
        except LesionsynthError:
            REJECTED.labels(service="synthesis", transport="grpc").inc()
            raise
        results = self.handler.run(tasks, "grpc")
        return synthesis_pb2.SynthesizeBatchResponse(items=[_response(r) for r in results])

    @grpc_errors
    def ProposeMask(self, request, context):
        try:
            task = parse_proposal(
                request.image,
                request.seed if request.HasField("seed") else None,
                request.roi_mask or None,
                self.limits,
            )
        except LesionsynthError:
            REJECTED.labels(service="synthesis", transport="grpc").inc()
            raise
        mask = self.handler.propose(task)
        return synthesis_pb2.ProposeMaskResponse(
            mask_png=encode_png(mask.astype("uint8") * 255), seed=task.seed
        )

    @grpc_errors
    def GetInfo(self, request, context):
        return synthesis_pb2.SynthesisInfo(**self.handler.info())


def registration(handler: SynthesisHandler):
    return (synthesis_pb2_grpc.add_SynthesisServicer_to_server, SynthesisServicer(handler), SERVICE_NAME)
