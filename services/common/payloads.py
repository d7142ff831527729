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
