"""Reject malformed or unsafe REST requests before BentoML parses them.

Found by fuzzing (schemathesis, issue 6) and by reading BentoML 1.4's request parsing
(_bentoml_impl/serde.py):
- a ``multipart/form-data`` body without a boundary, or with a malformed part, made BentoML answer 500;
  here it is a 400 that says what was wrong;
- BentoML downloads a file input given as a URL string (a multipart text part, or a whole JSON body that
  is a URL). A screening service must not fetch images from addresses a client names (server-side request
  forgery, data from anywhere), so any input that is an http(s) URL is refused: upload the bytes;
- only ``application/json`` and ``multipart/form-data`` are accepted (415 otherwise); BentoML also knows
  a pickle content type, which it refuses on main servers — refused here regardless.
The body is read once (under the request-size limit, which wraps this middleware), checked, and replayed.
"""

from __future__ import annotations

import re

from services.common.errors import MALFORMED_REQUEST, UNSUPPORTED_MEDIA_TYPE, send_problem

ACCEPTED = ("application/json", "multipart/form-data")
URL = re.compile(rb'^\s*"?\s*https?://', re.IGNORECASE)


class RequestGuardMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        content_type = headers.get(b"content-type", b"application/json").decode("latin-1")
        media = content_type.split(";")[0].strip().lower() or "application/json"
        if media not in ACCEPTED:
            return await send_problem(
                send,
                UNSUPPORTED_MEDIA_TYPE,
                f"unsupported content type {media!r}: send application/json or multipart/form-data",
            )
        chunks, more = [], True
        while more:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            chunks.append(event.get("body", b""))
            more = event.get("more_body", False)
        body = b"".join(chunks)
        problem = await self._check(scope, media, content_type, body)
        if problem:
            return await send_problem(send, MALFORMED_REQUEST, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _check(self, scope, media: str, content_type: str, body: bytes) -> str | None:
        if media == "application/json":
            if URL.match(body):
                return "URLs are not accepted as inputs: send the image bytes"
            return None
        if "boundary=" not in content_type:
            return "multipart/form-data without a boundary parameter"
        from starlette.requests import Request

        async def once():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form()
        except Exception as exc:  # starlette's MultiPartException and parser errors alike
            return f"malformed multipart body ({type(exc).__name__})"
        try:
            for name, value in form.multi_items():
                if isinstance(value, str) and URL.match(value.encode("utf-8", "ignore")):
                    return f"{name}: URLs are not accepted as inputs: upload the file"
        finally:
            await form.close()
        return None
