"""Helpers (not fixtures) for the REST API tests."""

from __future__ import annotations


def error_fields(response) -> dict:
    """The one error format: assert its shape and return the field errors."""
    body = response.json()
    assert set(body) >= {"detail", "code", "errors"}, body
    assert isinstance(body["detail"], str) and isinstance(body["errors"], dict)
    return body["errors"]
