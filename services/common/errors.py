"""One mapping from lesionsynth errors to REST statuses and gRPC codes.

A user-fixable problem (models.errors.LesionsynthError) becomes 400 / INVALID_ARGUMENT with its message,
which names what was wrong and never contains image bytes or file names. A backend that is down becomes
503 / UNAVAILABLE. Anything else is a bug: 500 / INTERNAL with a generic message, the traceback only in the
service log.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging

import grpc

from models.errors import BackendUnavailable, LesionsynthError, NotFoundError

log = logging.getLogger("lesionsynth.services")


#: Per HTTP request: the message of a 5xx this service means the client to read. BentoML replaces every
#: 5xx body with a generic text; ServerErrorDetailMiddleware puts this message back. The slot is a dict
#: set by the middleware, so code running in BentoML's worker threads (which copy the context) and
#: batch items that captured it can fill it in.
REQUEST_ERROR: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lesionsynth_error", default=None)


def request_error_slot() -> dict | None:
    return REQUEST_ERROR.get()


def note_server_error(message: str, slot: dict | None = None) -> None:
    slot = slot if slot is not None else REQUEST_ERROR.get()
    if slot is not None:
        slot["error"] = message


class ServerErrorDetailMiddleware:
    """ASGI: a 5xx whose cause was noted with :func:`note_server_error` says that cause, as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        slot: dict = {}
        token = REQUEST_ERROR.set(slot)
        replacing = False

        async def patched_send(event):
            nonlocal replacing
            if event["type"] == "http.response.start" and event["status"] >= 500 and slot.get("error"):
                replacing = True
                body = json.dumps({"error": slot["error"]}).encode()
                slot["body"] = body
                headers = [
                    (k, v)
                    for k, v in event.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                return await send({**event, "headers": headers})
            if event["type"] == "http.response.body" and replacing:
                if event.get("more_body"):
                    return None
                return await send({"type": "http.response.body", "body": slot["body"]})
            return await send(event)

        try:
            return await self.app(scope, receive, patched_send)
        finally:
            REQUEST_ERROR.reset(token)


class ConflictError(LesionsynthError):
    """A request that contradicts the current state (e.g. logs of a job that never started)."""


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, BackendUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ConflictError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, LesionsynthError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def http_error(exc: BaseException) -> Exception:
    """The bentoml exception to raise for ``exc`` (BentoML turns it into the status and a JSON error)."""
    from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound, ServiceUnavailable

    if isinstance(exc, BackendUnavailable):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, NotFoundError):
        return NotFound(str(exc))
    if isinstance(exc, ConflictError):
        from http import HTTPStatus

        return BentoMLException(str(exc), error_code=HTTPStatus.CONFLICT)
    if isinstance(exc, LesionsynthError):
        return InvalidArgument(str(exc))
    return exc


def rest_errors(fn):
    """Decorator for BentoML API methods: LesionsynthError -> 4xx/503 with its message."""

    if _is_async(fn):

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except LesionsynthError as exc:
                if isinstance(exc, BackendUnavailable):
                    note_server_error(str(exc))
                raise http_error(exc) from None

        return wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionsynthError as exc:
            if isinstance(exc, BackendUnavailable):
                note_server_error(str(exc))
            raise http_error(exc) from None

    return sync_wrapper


def grpc_errors(fn):
    """Decorator for unary gRPC servicer methods: errors -> status codes with clear details."""

    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except LesionsynthError as exc:
            context.abort(grpc_code(exc), str(exc))
        except Exception:
            if context.code() is not None:  # already aborted on purpose
                raise
            log.exception("gRPC %s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    return wrapper


def _is_async(fn) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
