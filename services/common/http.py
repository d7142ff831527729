"""The ASGI middleware stack every service's REST API runs behind."""

from __future__ import annotations

from pathlib import Path

from services.common.auth import BearerAuthMiddleware
from services.common.errors import PROBLEM_JSON, ProblemDetailsMiddleware, kind_for_status, problem
from services.common.limits import RequestSizeLimitMiddleware
from services.common.openapi import OpenApiMiddleware
from services.common.pages import StaticPagesMiddleware
from services.common.request_guard import RequestGuardMiddleware


def install_middleware(
    service, max_request_bytes: int, api_token: str | None, pages: dict[str, Path] | None = None
) -> None:
    """Outermost first: the size limit (before any body is read), the service's browser pages (GET, no
    auth: services/common/pages.py), auth (before parsing), malformed and
    unsafe requests (services/common/request_guard.py), the OpenAPI document's error bodies, then every
    error the app writes as problem details (services/common/errors.py)."""
    problem_json_traffic_replies()
    service.add_asgi_middleware(RequestSizeLimitMiddleware, max_bytes=max_request_bytes)
    if pages:
        service.add_asgi_middleware(StaticPagesMiddleware, pages=pages)
    service.add_asgi_middleware(BearerAuthMiddleware, token=api_token)
    service.add_asgi_middleware(RequestGuardMiddleware)
    service.add_asgi_middleware(OpenApiMiddleware)
    service.add_asgi_middleware(ProblemDetailsMiddleware)


def problem_json_traffic_replies() -> None:
    """BentoML's TimeoutMiddleware (504) and MaxConcurrencyMiddleware (429) run outside every service
    middleware and answer with starlette's JSONResponse; the name in their module is pointed at a response
    that writes problem details instead (BentoML is pinned; tests/test_errors.py checks both)."""
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    class ProblemResponse(JSONResponse):
        media_type = PROBLEM_JSON

        def __init__(self, content, status_code: int = 200, **kwargs):
            message = content.get("error") if isinstance(content, dict) else None
            kind = kind_for_status(status_code)
            super().__init__(
                problem(kind, str(message or kind.title), status=status_code), status_code, **kwargs
            )

    if getattr(traffic.JSONResponse, "media_type", None) != PROBLEM_JSON:
        traffic.JSONResponse = ProblemResponse
