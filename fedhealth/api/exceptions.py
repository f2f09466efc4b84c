"""One error format for every API response that is not a success.

    {"detail": "human-readable summary", "code": "machine_code",
     "errors": {"field": ["message", ...], "records.3.heart_rate": ["..."]}}

``errors`` is empty unless the request had field errors; nested fields are flattened
into dotted paths. Some errors add context keys (a dataset upload's ``report``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

log = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    """The request is valid but the resource's state does not allow it (e.g. a closed round)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


class InvalidWithContext(exceptions.ValidationError):
    """A validation error carrying extra top-level keys for the client (e.g. a report)."""

    def __init__(self, detail: Any, *, context: dict[str, Any], summary: str) -> None:
        super().__init__(detail)
        self.context = context
        self.summary = summary


def field_error(field: str, message: str) -> exceptions.ValidationError:
    """A 400 naming one field."""
    return exceptions.ValidationError({field: [message]})


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as ``{"a.b.0.c": [messages]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif (
        isinstance(detail, list) and detail and all(not isinstance(v, dict | list) for v in detail)
    ):
        out[prefix or "non_field_errors"] = [str(v) for v in detail]
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            if value:  # DRF puts {} for list items that were fine
                out.update(flatten(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _code(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "invalid"
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


@csrf_exempt  # answers every method with 404; a CSRF 403 page would break the one format
def not_found(request, *args: Any, **kwargs: Any) -> JsonResponse:
    """JSON 404 for any /api/ URL that matches no route (not the HTML page of the site)."""
    return JsonResponse({"detail": "Not found.", "code": "not_found", "errors": {}}, status=404)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's handler (status, WWW-Authenticate, Retry-After), reshaped to one format;
    unexpected exceptions become a logged JSON 500 rather than an HTML page."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, SuspiciousOperation):  # too many fields or files, a bad multipart body
        exc = exceptions.ParseError(str(exc))
    if not isinstance(exc, exceptions.APIException):
        log.exception("unhandled API error in %s", context.get("view").__class__.__name__)
        set_rollback()
        return Response(
            {"detail": "Internal server error.", "code": "server_error", "errors": {}},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    response = drf_exception_handler(exc, context)
    assert response is not None  # DRF handles every APIException
    if isinstance(exc.detail, dict | list):
        errors = flatten(exc.detail)
        summary = (
            "Invalid input." if isinstance(exc, exceptions.ValidationError) else "Request failed."
        )
        if len(errors) == 1:
            field, messages = next(iter(errors.items()))
            summary = messages[0] if field == "non_field_errors" else f"{field}: {messages[0]}"
    else:
        errors, summary = {}, str(exc.detail)
    body: dict[str, Any] = {"detail": summary, "code": _code(exc), "errors": errors}
    if isinstance(exc, InvalidWithContext):
        body = {**body, "detail": exc.summary, **exc.context}
    response.data = body
    return response
