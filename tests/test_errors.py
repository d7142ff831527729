"""Errors as RFC 9457 problem details: the one table (REST statuses and gRPC codes), the middleware that
rewrites BentoML's and Starlette's error bodies, the ASGI middlewares' own refusals, BentoML's traffic
limits (429, 504) and the OpenAPI document that declares all of it. In-process; the services' own tests
check the bodies over real HTTP."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

import models.errors as model_errors
from services.common import errors
from services.common.errors import (
    PROBLEM_JSON,
    ProblemDetailsMiddleware,
    grpc_code,
    kind_of,
    note_error,
)
from services.common.openapi import ERROR_STATUSES, problem_document


def run_app(app, scope: dict | None = None, body: bytes = b"") -> tuple[dict, dict]:
    """Call an ASGI app once; the response start event and the (joined) body."""
    events: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(event):
        events.append(event)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], **(scope or {})}
    asyncio.run(app(scope, receive, send))
    start = next(e for e in events if e["type"] == "http.response.start")
    payload = b"".join(e.get("body", b"") for e in events if e["type"] == "http.response.body")
    return start, json.loads(payload) if payload else {}


def answering(status: int, body: bytes, content_type: bytes = b"application/json", headers=()):
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def is_problem(start: dict, body: dict, status: int, kind: str | None = None) -> None:
    headers = dict(start["headers"])
    assert start["status"] == status and headers[b"content-type"] == PROBLEM_JSON.encode()
    assert set(body) >= {"type", "title", "status", "detail"} and body["status"] == status
    if kind:
        assert body["type"] == errors.TYPE_PREFIX + kind


def test_every_lesionsynth_error_has_a_row_with_a_status_and_a_grpc_code():
    kinds = {
        cls: kind_of(cls("x") if cls is not model_errors.ManifestError else cls(["x"]))
        for cls in vars(model_errors).values()
        if isinstance(cls, type) and issubclass(cls, model_errors.LesionsynthError)
    }
    assert kinds[model_errors.InvalidImageError].status == 422
    assert kinds[model_errors.NotFoundError].status == 404
    assert kinds[model_errors.BackendUnavailable].status == 503
    assert grpc_code(model_errors.BackendUnavailable("down")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(model_errors.ParameterError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(model_errors.NotFoundError("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(errors.ConflictError("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_code(RuntimeError("a bug")) == grpc.StatusCode.INTERNAL
    # One row per name; every kind the REST side can answer is declared in the OpenAPI documents.
    assert len({k.name for k in errors.ALL_KINDS}) == len(errors.ALL_KINDS)
    assert {k.status for k in errors.ALL_KINDS} == set(ERROR_STATUSES)


def test_pydantic_errors_become_field_errors_with_pointers_and_content_errors_422():
    schema_error = {
        "error": "1 validation error for Input",
        "detail": [{"type": "missing", "loc": ["items", 0, "image"], "msg": "Field required"}],
    }
    start, body = run_app(ProblemDetailsMiddleware(answering(400, json.dumps(schema_error).encode())))
    is_problem(start, body, 400, "invalid-request")
    assert body["errors"] == [{"pointer": "#/items/0/image", "detail": "Field required"}]
    # A validator's LesionsynthError (services.common.errors.content_error) keeps its kind: 422.
    content = {"detail": [{"type": "invalid-image", "loc": ["items", 1], "msg": "image: 1x1 is under ..."}]}
    start, body = run_app(ProblemDetailsMiddleware(answering(400, json.dumps(content).encode())))
    is_problem(start, body, 422, "invalid-image")
    assert body["errors"][0]["pointer"] == "#/items/1" and "1x1" in body["detail"]


def test_bentoml_and_starlette_bodies_and_noted_errors_become_problems():
    start, body = run_app(ProblemDetailsMiddleware(answering(404, b'[{"error": "no job with id x"}]')))
    is_problem(start, body, 404, "not-found")
    assert body["detail"] == "no job with id x"
    allow = (b"allow", b"POST")
    start, body = run_app(
        ProblemDetailsMiddleware(answering(405, b"Method Not Allowed", b"text/plain", headers=[allow]))
    )
    is_problem(start, body, 405, "method-not-allowed")
    assert dict(start["headers"])[b"allow"] == b"POST"
    # A bug's 500 never shows its text; a noted backend outage says why, with its kind.
    start, body = run_app(ProblemDetailsMiddleware(answering(500, b'{"error": "KeyError: secret"}')))
    is_problem(start, body, 500, "internal")
    assert "secret" not in body["detail"]

    async def outage(scope, receive, send):
        note_error(model_errors.BackendUnavailable("Triton at host:8001 is unavailable"))
        await answering(500, b'{"error": "An unexpected error has occurred"}')(scope, receive, send)

    start, body = run_app(ProblemDetailsMiddleware(outage))
    is_problem(start, body, 503, "backend-unavailable")
    assert body["detail"] == "Triton at host:8001 is unavailable"
    # Success passes through untouched.
    start, body = run_app(ProblemDetailsMiddleware(answering(200, b'{"ok": 1}')))
    assert start["status"] == 200 and body == {"ok": 1}


def test_the_outer_middlewares_refuse_with_problems():
    from services.common.auth import BearerAuthMiddleware
    from services.common.limits import RequestSizeLimitMiddleware
    from services.common.request_guard import RequestGuardMiddleware

    ok = answering(200, b"{}")
    start, body = run_app(BearerAuthMiddleware(ok, token="t" * 16))
    is_problem(start, body, 401, "unauthorized")
    assert dict(start["headers"])[b"www-authenticate"].startswith(b"Bearer")
    start, body = run_app(
        RequestSizeLimitMiddleware(ok, max_bytes=1024), {"headers": [(b"content-length", b"5000")]}
    )
    is_problem(start, body, 413, "too-large")
    start, body = run_app(RequestGuardMiddleware(ok), {"headers": [(b"content-type", b"text/plain")]})
    is_problem(start, body, 415, "unsupported-media-type")
    start, body = run_app(RequestGuardMiddleware(ok), body=b'"https://example.org/x.png"')
    is_problem(start, body, 400, "malformed-request")


def test_bentoml_traffic_limits_answer_with_problems():
    from bentoml._internal.server.http import traffic

    from services.common.http import problem_json_traffic_replies

    problem_json_traffic_replies()
    limited = traffic.MaxConcurrencyMiddleware(answering(200, b"{}"), max_concurrency=1)

    async def busy():
        await limited._semaphore.acquire()

    asyncio.run(busy())
    start, body = run_app(limited)
    is_problem(start, body, 429, "overloaded")

    async def slow(scope, receive, send):
        await asyncio.sleep(2)

    start, body = run_app(traffic.TimeoutMiddleware(slow, timeout=0.05))
    is_problem(start, body, 504, "timeout")
    assert "0.05 seconds" in body["detail"]


@pytest.fixture()
def bentoml_like_document() -> dict:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}}
    return {
        "paths": {
            "/list_jobs": {
                "post": {
                    "responses": {"200": {"description": "ok"}, "400": error, "404": error, "500": error},
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "state": {"default": None, "enum": ["queued"], "type": "string"},
                                        "limit": {"default": 100, "type": "integer"},
                                    },
                                }
                            }
                        }
                    },
                }
            },
            "/get_job": {
                "post": {
                    "responses": {"200": {"description": "ok"}, "400": error},
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "InvalidArgument": {"type": "object"},
                "In": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
            }
        },
    }


def test_openapi_declares_problem_details_and_what_requests_are_accepted(bentoml_like_document):
    doc = problem_document(bentoml_like_document)
    schemas = doc["components"]["schemas"]
    assert "InvalidArgument" not in schemas and "ProblemDetails" in schemas
    for item in doc["paths"].values():
        responses = item["post"]["responses"]
        assert sorted(int(s) for s in responses if s != "200") == ERROR_STATUSES
        assert all(
            responses[str(s)]["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("ProblemDetails")
            for s in ERROR_STATUSES
        )
    list_body = doc["paths"]["/list_jobs"]["post"]["requestBody"]
    state = list_body["content"]["application/json"]["schema"]["properties"]["state"]
    assert state["nullable"] is True and state["enum"] == ["queued", None]
    assert "required" not in list_body  # nothing required: an empty body is valid
    assert doc["paths"]["/get_job"]["post"]["requestBody"]["required"] is True
