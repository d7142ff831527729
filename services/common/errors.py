"""Errors as RFC 9457 problem details: one table from error kinds to REST statuses and gRPC codes.

Every REST 4xx/5xx of every service is ``application/problem+json``::

    {"type": "urn:lesionsynth:problem:invalid-image", "title": "Invalid image", "status": 422,
     "detail": "image: 1x1 is under the minimum of 32 pixels per side (LESIONSYNTH_MIN_IMAGE_SIDE)",
     "errors": [{"pointer": "#/items/0", "detail": "..."}]}

``errors`` lists field-level problems (pydantic's validation errors, each with a JSON pointer into the
request). The gRPC servicers take their status codes from the same table (:func:`grpc_code`).

Statuses: a request that does not match the OpenAPI document (a missing field, a wrong type, a string
that is not base64) is 400; a request that matches it but whose content cannot be used (bytes that are
not an image, an empty mask, steps out of range, an unknown job type) is 422, since a JSON schema cannot
say "a PNG of at least 32 x 32 pixels". A backend that is down is 503 / UNAVAILABLE. Anything else is a
bug: 500 / INTERNAL with a generic message, the traceback only in the service log. Messages never carry
image bytes or file names (models/errors.py).

BentoML writes its own error bodies (``[{"error": ...}]``, pydantic's ``{"error", "detail": [...]}``)
and replaces every 5xx body with a generic text; :class:`ProblemDetailsMiddleware` turns each into problem
details, using the kind and message a handler noted in the request's slot (:func:`note_error`) when there
is one, so a 503 still says why ("Triton at host:8001 is unavailable ...").
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

import grpc

from models.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidImageError,
    InvalidMaskError,
    LesionsynthError,
    ManifestError,
    ModelFolderError,
    NotFoundError,
    ParameterError,
    StorageError,
)

log = logging.getLogger("lesionsynth.services")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:lesionsynth:problem:"
Code = grpc.StatusCode


class ConflictError(LesionsynthError):
    """A request that contradicts the current state (e.g. logs of a job that never started)."""


@dataclass(frozen=True)
class ErrorKind:
    """One row of the table: a problem ``type`` with its title, REST status and gRPC code."""

    name: str
    title: str
    status: int
    grpc_code: grpc.StatusCode

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.name


# Raised by our code (models.errors): the first row whose class matches wins, so subclasses come first.
BACKEND_UNAVAILABLE = ErrorKind("backend-unavailable", "Inference backend unavailable", 503, Code.UNAVAILABLE)
NOT_FOUND = ErrorKind("not-found", "Not found", 404, Code.NOT_FOUND)
CONFLICT = ErrorKind("conflict", "Conflicts with the current state", 409, Code.FAILED_PRECONDITION)
INVALID_IMAGE = ErrorKind("invalid-image", "Image cannot be used", 422, Code.INVALID_ARGUMENT)
INVALID_MASK = ErrorKind("invalid-mask", "Mask cannot be used", 422, Code.INVALID_ARGUMENT)
INVALID_PARAMETER = ErrorKind("invalid-parameter", "Parameter out of range", 422, Code.INVALID_ARGUMENT)
INVALID_MANIFEST = ErrorKind("invalid-manifest", "Manifest has problems", 422, Code.INVALID_ARGUMENT)
INVALID_MODEL = ErrorKind("invalid-model", "Model folder cannot be used", 422, Code.INVALID_ARGUMENT)
INVALID_CONFIG = ErrorKind(
    "invalid-config", "Options contradict each other or the data", 422, Code.INVALID_ARGUMENT
)
STORAGE = ErrorKind("storage", "Storage failure", 507, Code.RESOURCE_EXHAUSTED)
INVALID_INPUT = ErrorKind("invalid-input", "Input cannot be used", 422, Code.INVALID_ARGUMENT)
EXCEPTION_KINDS: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (BackendUnavailable, BACKEND_UNAVAILABLE),
    (NotFoundError, NOT_FOUND),
    (ConflictError, CONFLICT),
    (InvalidImageError, INVALID_IMAGE),
    (InvalidMaskError, INVALID_MASK),
    (ParameterError, INVALID_PARAMETER),
    (ManifestError, INVALID_MANIFEST),
    (ModelFolderError, INVALID_MODEL),
    (ConfigError, INVALID_CONFIG),
    (StorageError, STORAGE),
    (LesionsynthError, INVALID_INPUT),
)
# Raised by the transport (middlewares, BentoML, grpcio) rather than by a handler.
INVALID_REQUEST = ErrorKind(
    "invalid-request", "Request does not match the API schema", 400, Code.INVALID_ARGUMENT
)
MALFORMED_REQUEST = ErrorKind("malformed-request", "Malformed or unsafe request", 400, Code.INVALID_ARGUMENT)
UNAUTHORIZED = ErrorKind("unauthorized", "Unauthorized", 401, Code.UNAUTHENTICATED)
METHOD_NOT_ALLOWED = ErrorKind("method-not-allowed", "Method not allowed", 405, Code.UNIMPLEMENTED)
TOO_LARGE = ErrorKind("too-large", "Request too large", 413, Code.RESOURCE_EXHAUSTED)
UNSUPPORTED_MEDIA_TYPE = ErrorKind(
    "unsupported-media-type", "Unsupported media type", 415, Code.INVALID_ARGUMENT
)
OVERLOADED = ErrorKind("overloaded", "Too many requests in flight", 429, Code.RESOURCE_EXHAUSTED)
INTERNAL = ErrorKind("internal", "Internal error", 500, Code.INTERNAL)
TIMEOUT = ErrorKind("timeout", "Request timed out", 504, Code.DEADLINE_EXCEEDED)
TRANSPORT_KINDS = (
    INVALID_REQUEST,
    MALFORMED_REQUEST,
    UNAUTHORIZED,
    METHOD_NOT_ALLOWED,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    OVERLOADED,
    INTERNAL,
    TIMEOUT,
)
ALL_KINDS: tuple[ErrorKind, ...] = (*dict.fromkeys(k for _, k in EXCEPTION_KINDS), *TRANSPORT_KINDS)
KIND_BY_NAME = {k.name: k for k in ALL_KINDS}
#: What a response says when only its status is known (BentoML's and Starlette's own errors).
KIND_BY_STATUS = {
    400: INVALID_REQUEST,
    401: UNAUTHORIZED,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: CONFLICT,
    413: TOO_LARGE,
    415: UNSUPPORTED_MEDIA_TYPE,
    422: INVALID_INPUT,
    429: OVERLOADED,
    500: INTERNAL,
    503: BACKEND_UNAVAILABLE,
    504: TIMEOUT,
    507: STORAGE,
}
INTERNAL_DETAIL = "an unexpected error occurred; see the service log"


def kind_of(exc: BaseException) -> ErrorKind:
    for cls, kind in EXCEPTION_KINDS:
        if isinstance(exc, cls):
            return kind
    return INTERNAL


def kind_for_status(status: int) -> ErrorKind:
    kind = KIND_BY_STATUS.get(status)
    if kind is None:  # a status no row names: RFC 9457's "about:blank", titled by the status
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return ErrorKind("", phrase, status, Code.UNKNOWN)
    return kind


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    return kind_of(exc).grpc_code


def problem(
    kind: ErrorKind, detail: str, errors: list[dict] | None = None, status: int | None = None
) -> dict:
    """The problem-details object (RFC 9457) of ``kind``."""
    body = {
        "type": kind.type if kind.name else "about:blank",
        "title": kind.title,
        "status": status or kind.status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return body


def problem_events(
    kind: ErrorKind, detail: str, headers: tuple[tuple[bytes, bytes], ...] = (), status: int | None = None
) -> tuple[dict, dict]:
    """ASGI ``http.response.start`` and ``http.response.body`` events answering with ``kind``."""
    body = json.dumps(problem(kind, detail, status=status)).encode()
    start = {
        "type": "http.response.start",
        "status": status or kind.status,
        "headers": [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


async def send_problem(send, kind: ErrorKind, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
    for event in problem_events(kind, detail, headers):
        await send(event)


def json_pointer(loc) -> str:
    """A pydantic ``loc`` as a JSON pointer (RFC 6901) in URI-fragment form, as RFC 9457's examples."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    return "#/" + "/".join(parts) if parts else "#"


#: Per HTTP request: the kind and message of the error a handler raised, for ProblemDetailsMiddleware
#: (BentoML's own body loses the kind, and a 5xx body its message). The slot is a dict set by the
#: middleware, so code in BentoML's worker threads (which copy the context) and batch items that
#: captured it can fill it in.
REQUEST_ERROR: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lesionsynth_error", default=None)


def request_error_slot() -> dict | None:
    return REQUEST_ERROR.get()


def note_error(exc: BaseException, slot: dict | None = None) -> None:
    """Record ``exc``'s kind and message for this request's problem details."""
    slot = slot if slot is not None else REQUEST_ERROR.get()
    if slot is not None:
        slot["kind"], slot["detail"] = kind_of(exc), str(exc)


def _from_bentoml_body(
    status: int, content_type: bytes, body: bytes
) -> tuple[ErrorKind, str, list | None, int]:
    """Kind, detail, field errors and status of an error response BentoML or Starlette wrote."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic's ValidationError
        items = [e for e in data["detail"] if isinstance(e, dict)]
        errors = [
            {"pointer": json_pointer(e.get("loc") or ()), "detail": str(e.get("msg", ""))} for e in items
        ]
        kinds = [KIND_BY_NAME.get(str(e.get("type"))) for e in items]
        content = [k for k in kinds if k is not None and k.status == 422]
        # Every problem is about content the schema allows (our decoders' errors): 422. Otherwise 400.
        kind = content[0] if content and len(content) == len(kinds) else INVALID_REQUEST
        detail = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors) or kind.title
        return kind, detail, errors, kind.status
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    message = data.get("error") if isinstance(data, dict) else None
    if message is None and content_type.startswith(b"text/plain") and 0 < len(body) <= 500:
        message = body.decode("utf-8", "replace").strip()
    kind = kind_for_status(status)
    if status >= 500 and kind is not BACKEND_UNAVAILABLE and kind is not TIMEOUT:
        message = INTERNAL_DETAIL  # never a bug's text
    return kind, str(message or kind.title), None, status


class ProblemDetailsMiddleware:
    """ASGI, innermost: every 4xx/5xx the app writes leaves as ``application/problem+json``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        slot: dict = {}
        token = REQUEST_ERROR.set(slot)
        held: dict | None = None
        chunks: list[bytes] = []

        async def patched_send(event):
            nonlocal held
            if event["type"] == "http.response.start" and event["status"] >= 400:
                held = event
                return None
            if event["type"] == "http.response.body" and held is not None:
                chunks.append(event.get("body", b""))
                if event.get("more_body"):
                    return None
                for part in self._rewrite(held, b"".join(chunks), slot):
                    await send(part)
                return None
            return await send(event)

        try:
            return await self.app(scope, receive, patched_send)
        finally:
            REQUEST_ERROR.reset(token)

    @staticmethod
    def _rewrite(start: dict, body: bytes, slot: dict) -> tuple[dict, dict]:
        headers = [(k.lower(), v) for k, v in start.get("headers", [])]
        content_type = dict(headers).get(b"content-type", b"")
        if content_type.startswith(PROBLEM_JSON.encode()):
            return start, {"type": "http.response.body", "body": body}
        if "kind" in slot:
            kind, detail, errors, status = slot["kind"], slot["detail"], None, slot["kind"].status
        else:
            kind, detail, errors, status = _from_bentoml_body(start["status"], content_type, body)
        payload = json.dumps(problem(kind, detail, errors, status)).encode()
        kept = [(k, v) for k, v in headers if k not in (b"content-length", b"content-type")]
        kept += [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]
        return {**start, "status": status, "headers": kept}, {"type": "http.response.body", "body": payload}


def content_error(exc: LesionsynthError):
    """A pydantic error for a validator to raise for ``exc``: its type is the kind's name, so the
    response becomes that kind (422) rather than a schema mismatch (400)."""
    from pydantic_core import PydanticCustomError

    return PydanticCustomError(kind_of(exc).name, "{detail}", {"detail": str(exc)})


def http_error(exc: BaseException) -> Exception:
    """The bentoml exception to raise for ``exc`` (its status from the table)."""
    from bentoml.exceptions import BentoMLException

    if not isinstance(exc, LesionsynthError):
        return exc
    return BentoMLException(str(exc), error_code=HTTPStatus(kind_of(exc).status))


def rest_errors(fn):
    """Decorator for BentoML API methods: a LesionsynthError becomes its kind's status and problem."""

    if _is_async(fn):

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except LesionsynthError as exc:
                note_error(exc)
                raise http_error(exc) from None

        return wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionsynthError as exc:
            note_error(exc)
            raise http_error(exc) from None

    return sync_wrapper


def grpc_errors(fn):
    """Decorator for unary gRPC servicer methods: errors -> the table's status codes with clear details."""

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
            context.abort(INTERNAL.grpc_code, "internal error; see the service log")

    return wrapper


def _is_async(fn) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
