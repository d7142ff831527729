"""The gRPC server a service starts beside its REST API, answering from the same process.

BentoML 1.4 serves no gRPC for new-style services (../shared/STACK.md), so each service starts a
grpcio server in its ``__init__`` and stops it in ``@bentoml.on_shutdown``. Every server also serves
``grpc.health.v1.Health`` (SERVING once the model is loaded) and server reflection (grpcurl needs no
.proto files), enforces the same byte limit as REST and, when a token is set, bearer auth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import BearerAuthInterceptor
from services.common.errors import MALFORMED_REQUEST
from services.common.metrics import GRPC_REQUESTS, GRPC_SECONDS
from services.common.settings import CommonSettings

log = logging.getLogger("lesionsynth.services")

#: (add_XServicer_to_server, servicer, full service name from the descriptor)
Registration = tuple[Callable, object, str]


class GrpcServer:
    def __init__(self, service: str, settings: CommonSettings, registrations: Sequence[Registration]):
        options = [
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", max(settings.max_request_bytes, 64 * 1024 * 1024)),
            # Several BentoML workers may share one gRPC port (the kernel balances connections).
            ("grpc.so_reuseport", 1),
        ]
        # Auth first: a refused call is not timed as the method.
        interceptors = [BearerAuthInterceptor(settings.api_token)] if settings.api_token else []
        interceptors += [MetricsInterceptor(service), MalformedMessageInterceptor()]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
            options=options,
            interceptors=interceptors,
            maximum_concurrent_rpcs=settings.grpc_workers * 8,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        for add, servicer, name in registrations:
            add(servicer, self.server)
            names.append(name)
        self.names = [name for _, _, name in registrations]
        reflection.enable_server_reflection(names, self.server)
        address = f"{settings.host}:{settings.grpc_port}"
        # grpcio returns 0 (older) or raises RuntimeError (1.6x) when the port is taken; either way say
        # which setting to change.
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise RuntimeError(
                f"cannot bind gRPC to {address}: address already in use or not permitted; "
                "set LESIONSYNTH_GRPC_PORT (or LESIONSYNTH_HOST) to a free one"
            )

    def start(self) -> GrpcServer:
        self.server.start()
        for name in ["", *self.names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC serving on port %d", self.port)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Count and time every call except health and reflection (GRPC_REQUESTS, GRPC_SECONDS)."""

    def __init__(self, service: str):
        self.service = service
        #: Metric children by label values, looked up once (``.labels()`` checks and locks on every call).
        self._requests: dict[tuple[str, str], object] = {}
        self._seconds: dict[str, object] = {}

    def _record(self, method: str, context, started: float, failed: bool) -> None:
        code = context.code() if failed else None
        code_name = code.name if code is not None else ("UNKNOWN" if failed else "OK")
        if (counter := self._requests.get((method, code_name))) is None:
            counter = GRPC_REQUESTS.labels(service=self.service, method=method, code=code_name)
            self._requests[(method, code_name)] = counter
        if (seconds := self._seconds.get(method)) is None:
            seconds = self._seconds[method] = GRPC_SECONDS.labels(service=self.service, method=method)
        counter.inc()
        seconds.observe(time.perf_counter() - started)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        name = handler_call_details.method
        if handler is None or name.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        method = name.rsplit("/", 1)[-1]

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request, context):
                started, failed = time.perf_counter(), True
                try:
                    response = inner(request, context)
                    failed = False
                    return response
                finally:
                    self._record(method, context, started, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request, context):
                started, failed = time.perf_counter(), True
                try:
                    yield from inner_stream(request, context)
                    failed = False
                finally:
                    self._record(method, context, started, failed)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


class _Malformed:
    """Stands in for a request whose bytes did not parse; the method answers INVALID_ARGUMENT."""

    def __init__(self, error: Exception):
        self.error = error


class MalformedMessageInterceptor(grpc.ServerInterceptor):
    """grpcio answers INTERNAL ("Exception deserializing request!") to bytes that are not the method's
    request message: a client's mistake reported as a server fault. Found by fuzzing (issue 6); here it is
    INVALID_ARGUMENT naming the expected message type."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method

        def deserialize(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # protobuf's DecodeError and friends
                return _Malformed(exc)

        def check(request, context) -> None:
            if isinstance(request, _Malformed):
                context.abort(
                    MALFORMED_REQUEST.grpc_code,
                    f"malformed request: the bytes are not a valid request message of {method}",
                )

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request, context):
                check(request, context)
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserialize, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request, context):
                check(request, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(stream, deserialize, handler.response_serializer)
        return handler
