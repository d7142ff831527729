"""Helpers for JSON request payloads shared by the services."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import Field

from models.spec import params_of


def b64(field: str, value: str) -> bytes:
    """Strict base64 decoding; a ValueError naming ``field`` otherwise (pydantic makes it a 400)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None


def optional_field(spec: type, name: str) -> Any:
    """A request field for recipe parameter ``name`` of ``spec`` (models/spec.py), unset by default (the
    recipe's default applies): its range and help come from the declaration, not a copy. An open lower
    bound is declared closed (OpenAPI 3.0, which BentoML writes, has no numeric exclusiveMinimum); the
    recipe's own check then refuses the bound itself with its message."""
    p, default = params_of(spec)[name]
    bounds = {k: v for k, v in (("ge", p.lo), ("le", p.hi)) if v is not None}
    return Field(None, **bounds, description=f"{p.help} Unset: {default!r}.")


#: A base64 field's schema, for ``Field(json_schema_extra=BASE64)``: OpenAPI 3.0's ``format: byte``, JSON
#: Schema's ``contentEncoding`` and the exact alphabet-and-padding pattern :func:`b64` accepts, so a
#: client (or schemathesis) reading the document sends what the service decodes.
BASE64 = {
    "format": "byte",
    "contentEncoding": "base64",
    "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}
