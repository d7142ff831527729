"""Helpers for JSON request payloads shared by the services."""

from __future__ import annotations

import base64
import binascii


def b64(field: str, value: str) -> bytes:
    """Strict base64 decoding; a ValueError naming ``field`` otherwise (pydantic makes it a 400)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None


#: A base64 field's schema, for ``Field(json_schema_extra=BASE64)``: OpenAPI 3.0's ``format: byte``, JSON
#: Schema's ``contentEncoding`` and the exact alphabet-and-padding pattern :func:`b64` accepts, so a
#: client (or schemathesis) reading the document sends what the service decodes.
BASE64 = {
    "format": "byte",
    "contentEncoding": "base64",
    "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}
