"""The OpenAPI document each service serves (``/docs.json``), made to say what the service does.

BentoML generates the document from the API signatures and declares its own error bodies (400, 404 and
500 as ``{"error", "detail"}`` JSON objects), which no response of ours matches: every error is problem
details (services/common/errors.py). :func:`problem_document` replaces those with one ``ProblemDetails``
schema under ``application/problem+json`` for every status of the error table, on every operation
(the middlewares answer any path: 401, 413, 415, 429 and 504 come before routing). It also makes the
request bodies say what the service accepts: a body with required fields is itself required (BentoML
leaves ``requestBody.required`` out, so an empty POST looked valid), and an optional field whose default
is None is ``nullable`` (BentoML flattens ``str | None`` to ``string``, so ``null`` looked invalid).
Base64 fields declare themselves through their pydantic ``Field`` (services/common/payloads.py).
"""

from __future__ import annotations

import json

from services.common.errors import ALL_KINDS, PROBLEM_JSON, TYPE_PREFIX

DOCS_PATH = "/docs.json"
#: BentoML's error components, which nothing answers with.
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
ERROR_STATUSES = sorted({kind.status for kind in ALL_KINDS})
PROBLEM_SCHEMA = {
    "type": "object",
    "title": "ProblemDetails",
    "description": "RFC 9457 problem details; `type` names the error kind (services/common/errors.py).",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": f"{TYPE_PREFIX}<kind>, or about:blank",
            "enum": sorted({kind.type for kind in ALL_KINDS} | {"about:blank"}),
        },
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What was wrong, for a person; never image bytes."},
        "errors": {
            "type": "array",
            "description": "Field-level problems (request validation), each with a JSON pointer.",
            "items": {
                "type": "object",
                "required": ["pointer", "detail"],
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}


def problem_document(doc: dict) -> dict:
    """``doc`` with every operation's error responses declared as problem details."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["ProblemDetails"] = PROBLEM_SCHEMA
    response = {
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
    }
    titles = {}
    for kind in ALL_KINDS:
        titles.setdefault(kind.status, []).append(kind.title)
    for item in doc.get("paths", {}).values():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete") or not isinstance(operation, dict):
                continue
            _request_truths(operation, schemas)
            responses = operation.setdefault("responses", {})
            for status in [s for s in responses if str(s)[0] in "45"]:
                del responses[status]
            for status in ERROR_STATUSES:
                responses[str(status)] = {"description": "; ".join(titles[status]), **response}
    return doc


def _request_truths(operation: dict, schemas: dict) -> None:
    body = operation.get("requestBody")
    if not isinstance(body, dict):
        return
    for media in body.get("content", {}).values():
        schema = media.get("schema") or {}
        ref = schema.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            schema = schemas.get(ref.rsplit("/", 1)[-1], {})
        if schema.get("required"):
            body["required"] = True
        for prop in (schema.get("properties") or {}).values():
            if isinstance(prop, dict) and "default" in prop and prop["default"] is None:
                prop["nullable"] = True
                if "enum" in prop and None not in prop["enum"]:  # OpenAPI 3.0.3: null must be listed too
                    prop["enum"] = [*prop["enum"], None]


class OpenApiMiddleware:
    """ASGI: rewrite BentoML's ``/docs.json`` through :func:`problem_document`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != DOCS_PATH or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        held: dict | None = None
        chunks: list[bytes] = []

        async def collect(event):
            nonlocal held
            if event["type"] == "http.response.start":
                held = event
                return None
            if event["type"] == "http.response.body" and held is not None:
                chunks.append(event.get("body", b""))
                if event.get("more_body"):
                    return None
                body = b"".join(chunks)
                if held["status"] == 200:
                    body = json.dumps(problem_document(json.loads(body))).encode()
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                return await send({"type": "http.response.body", "body": body})
            return await send(event)

        return await self.app(scope, receive, collect)
