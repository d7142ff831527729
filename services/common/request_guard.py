"""Reject malformed or unsafe REST requests before BentoML parses them.

Found by fuzzing (schemathesis, issue 6) and by reading BentoML 1.4's request parsing
(_bentoml_impl/serde.py):
- a ``multipart/form-data`` body without a boundary, or with a malformed part, made BentoML answer 500;
  here it is a 400 that says what was wrong;
- BentoML downloads a file input given as a URL string (a multipart text part, or a whole JSON body that
  is a URL). A screening service must not fetch images from addresses a client names (server-side request
  forgery, data from anywhere), so any input that is an http(s) URL is refused: upload the bytes;
- only ``application/json`` and ``multipart/form-data`` are accepted (415 otherwise); BentoML also knows
  a pickle content type, which it refuses on main servers — refused here regardless. One exception: a raw
  ``application/dicom`` body (a DICOM file, as PACS tools send it) to an endpoint that takes one file
  (:data:`RAW_FILE_FIELDS`: the classifier's ``/classify``) is wrapped here as that multipart field.
The body is read once (under the request-size limit, which wraps this middleware), checked, and replayed.
"""

from __future__ import annotations

import re

from services.common.errors import MALFORMED_REQUEST, UNSUPPORTED_MEDIA_TYPE, send_problem

ACCEPTED = ("application/json", "multipart/form-data")
#: Endpoints taking one file, and its field: a raw ``application/dicom`` body becomes that field.
RAW_FILE_FIELDS = {"/classify": "image"}
DICOM = "application/dicom"
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
        raw_field = RAW_FILE_FIELDS.get(scope["path"]) if media == DICOM else None
        if media not in ACCEPTED and raw_field is None:
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
        if raw_field is not None:
            scope, body = _as_multipart(scope, raw_field, body)
            media = "multipart/form-data"
            content_type = dict(scope["headers"])[b"content-type"].decode("latin-1")
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


def _as_multipart(scope, field: str, body: bytes):
    """``body`` (a raw file) as a one-part multipart/form-data body named ``field``, with the headers."""
    import uuid

    boundary = uuid.uuid4().hex
    wrapped = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{field}.dcm"\r\n'
            f"Content-Type: {DICOM}\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = [(k, v) for k, v in scope.get("headers") or () if k not in (b"content-type", b"content-length")]
    headers += [
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        (b"content-length", str(len(wrapped)).encode()),
    ]
    return {**scope, "headers": headers}, wrapped
