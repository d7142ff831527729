"""The ASGI middleware stack every service's REST API runs behind."""

from __future__ import annotations

from services.common.auth import BearerAuthMiddleware
from services.common.errors import ServerErrorDetailMiddleware
from services.common.limits import RequestSizeLimitMiddleware
from services.common.request_guard import RequestGuardMiddleware


def install_middleware(service, max_request_bytes: int, api_token: str | None) -> None:
    """Outermost first: the size limit (before any body is read), auth (before parsing), malformed and
    unsafe requests (services/common/request_guard.py), then 5xx bodies that keep their cause."""
    service.add_asgi_middleware(RequestSizeLimitMiddleware, max_bytes=max_request_bytes)
    service.add_asgi_middleware(BearerAuthMiddleware, token=api_token)
    service.add_asgi_middleware(RequestGuardMiddleware)
    service.add_asgi_middleware(ServerErrorDetailMiddleware)
