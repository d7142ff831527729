"""One mapping from lesionsynth errors to REST statuses and gRPC codes.

A user-fixable problem (models.errors.LesionsynthError) becomes 400 / INVALID_ARGUMENT with its message,
which names what was wrong and never contains image bytes or file names. A backend that is down becomes
503 / UNAVAILABLE. Anything else is a bug: 500 / INTERNAL with a generic message, the traceback only in the
service log.
"""

from __future__ import annotations

import functools
import logging

import grpc

from models.errors import BackendUnavailable, LesionsynthError

log = logging.getLogger("lesionsynth.services")


class NotFoundError(LesionsynthError):
    """A job or model version that does not exist."""


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
                raise http_error(exc) from None

        return wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionsynthError as exc:
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
