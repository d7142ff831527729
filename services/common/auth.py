"""Optional bearer-token auth for REST (ASGI middleware) and gRPC (server interceptor).

Off when no token is configured (the localhost default); the Kubernetes manifests set one. Health
endpoints stay open so probes need no secret: REST ``/livez /readyz /healthz`` and ``/metrics`` (the
Prometheus scrape, which holds counters, never request data), gRPC ``grpc.health.v1.Health``.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

import grpc

from services.common.errors import UNAUTHORIZED, send_problem

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="lesionsynth"')


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())


def refusal(header: str | None) -> str:
    return "missing bearer token" if not header else "invalid bearer token"


class BearerAuthMiddleware:
    """ASGI: 401 with problem details unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1") or None
        if token_matches(header, self.token):
            return await self.app(scope, receive, send)
        await send_problem(send, UNAUTHORIZED, f"unauthorized: {refusal(header)}", (WWW_AUTHENTICATE,))


class BearerAuthInterceptor(grpc.ServerInterceptor):
    """gRPC: UNAUTHENTICATED unless the ``authorization`` metadata is ``Bearer <token>``."""

    def __init__(self, token: str):
        self.token = token

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_GRPC_PREFIXES):
            return continuation(handler_call_details)
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if token_matches(header, self.token):
            return continuation(handler_call_details)
        message = f"unauthorized: {refusal(header)}"

        def deny(request, context):
            context.abort(UNAUTHORIZED.grpc_code, message)

        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(deny)
            return grpc.unary_stream_rpc_method_handler(deny)
        if handler is not None and handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
