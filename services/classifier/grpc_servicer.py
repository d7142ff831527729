"""gRPC adapter: lesionsynth.v1.Classifier over the shared ClassifierHandler."""

from __future__ import annotations

from dataclasses import asdict

from models.errors import LesionsynthError, ParameterError
from services.classifier.handler import ClassifierHandler, parse_image
from services.common.errors import grpc_errors
from services.common.metrics import REJECTED
from services.grpc_stubs import classifier_pb2, classifier_pb2_grpc

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, handler: ClassifierHandler):
        self.handler = handler
        self.limits = handler.settings.common
        self.max_items = handler.settings.common.max_batch_items

    def _images(self, items) -> list:
        try:
            if not items:
                raise ParameterError("items is empty: send at least one image")
            if len(items) > self.max_items:
                raise ParameterError(f"items has {len(items)} images; at most {self.max_items} per call")
            role = "image" if len(items) == 1 else "items[{}].image"
            return [parse_image(item.image, self.limits, role.format(i)) for i, item in enumerate(items)]
        except LesionsynthError:
            REJECTED.labels(service="classifier", transport="grpc").inc()
            raise

    @grpc_errors
    def Classify(self, request, context):
        result = self.handler.classify(self._images([request]), "grpc")[0]
        return classifier_pb2.Classification(**asdict(result))

    @grpc_errors
    def ClassifyBatch(self, request, context):
        results = self.handler.classify(self._images(request.items), "grpc")
        return classifier_pb2.ClassifyBatchResponse(
            items=[classifier_pb2.Classification(**asdict(r)) for r in results]
        )

    @grpc_errors
    def GetInfo(self, request, context):
        return classifier_pb2.ClassifierInfo(**self.handler.info())


def registration(handler: ClassifierHandler):
    return (classifier_pb2_grpc.add_ClassifierServicer_to_server, ClassifierServicer(handler), SERVICE_NAME)
