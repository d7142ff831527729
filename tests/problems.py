"""Assertions on the services' error bodies: RFC 9457 problem details (services/common/errors.py)."""

from __future__ import annotations

from services.common.errors import PROBLEM_JSON, TYPE_PREFIX


def assert_problem(response, status: int, text: str = "", kind: str | None = None) -> dict:
    """``response`` is a ``status`` problem-details body whose detail (or a field error) contains ``text``."""
    assert response.status_code == status, (status, response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith((TYPE_PREFIX, "about:")), (
        body
    )
    details = [body["detail"], *(e["detail"] for e in body.get("errors", []))]
    assert any(text in d for d in details), (text, body)
    for error in body.get("errors", []):
        assert error["pointer"].startswith("#"), error
    if kind is not None:
        assert body["type"] == TYPE_PREFIX + kind, body
    return body
