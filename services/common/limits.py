"""Request-size limit for REST (ASGI middleware): 413 before a large body is buffered.

The declared ``Content-Length`` is checked first; a chunked body is counted as it streams and cut off at
the limit. Pixel limits are enforced later, from the image header (models.data.images). gRPC gets the
same byte limit through ``grpc.max_receive_message_length``.
"""

from __future__ import annotations

from services.common.errors import TOO_LARGE, send_problem


class RequestTooLarge(Exception):
    pass


class RequestSizeLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the limit of {self.max_bytes} bytes (LESIONSYNTH_MAX_REQUEST_BYTES)"
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_problem(send, TOO_LARGE, message)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(message)
            return event

        async def tracked_send(event):
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            return await self.app(scope, counted_receive, tracked_send)
        except RequestTooLarge:
            if not started:
                await send_problem(send, TOO_LARGE, message)
            return None
