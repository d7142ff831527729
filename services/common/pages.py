"""Browser pages served by the services themselves: the studio (synthesis) and the review page (training).

Plain HTML/JS files from the service's ``static/`` folder, answered on exact GET paths by an ASGI
middleware that sits outside auth (services/common/http.py): a page holds no data, it asks the person for
the bearer token and sends it with every API call. The Content-Security-Policy allows nothing from
elsewhere (no CDN, fonts or scripts from other origins): the pages work offline.
"""

from __future__ import annotations

from pathlib import Path

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


#: What every page loads first (services/common/static/page.js: $, the status line, the API call).
SHARED = {"/static/page.js": Path(__file__).parent / "static" / "page.js"}


def static_pages(folder: Path, routes: dict[str, str]) -> dict[str, Path]:
    """{URL path: file in ``folder``} plus :data:`SHARED`; every file must exist (a packaging mistake
    fails at import)."""
    pages = {**SHARED, **{url: folder / name for url, name in routes.items()}}
    missing = [str(p) for p in pages.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"page files missing from the package: {', '.join(missing)}")
    return pages


class StaticPagesMiddleware:
    """ASGI: GET/HEAD on one of ``pages``' paths answers the file; everything else passes through."""

    def __init__(self, app, pages: dict[str, Path] | None = None):
        self.app = app
        self.pages = {
            path: (file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))
            for path, file in (pages or {}).items()
        }

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or scope["path"] not in self.pages
        ):
            return await self.app(scope, receive, send)
        body, content_type = self.pages[scope["path"]]
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"),
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
