"""OpenAPI details drf-spectacular cannot infer: the token scheme and the error format.

Imported by ``fedhealth/api_urls.py`` so the extension registers before any schema
is generated.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import serializers

ERROR_REF = {"$ref": "#/components/schemas/Error"}
# Statuses any endpoint may answer (bad input, no/invalid token, forbidden, not
# found or out of scope, throttled), documented once for all in the hook below.
COMMON_ERRORS = {
    "400": "Invalid input; `errors` maps each bad field to its messages.",
    "401": "No token or session, or an invalid or revoked token.",
    "403": "Authenticated, but this caller may not do this.",
    "404": "No such object, or not visible to this caller.",
    "429": "Too many requests; retry after the `Retry-After` seconds.",
}


class ErrorSerializer(serializers.Serializer):
    """The one error body of the API (see fedhealth/api/exceptions.py)."""

    detail = serializers.CharField()
    code = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "clients.api.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal token (fhp_...) or a site agent token (fhs_...): "
            "`Authorization: Bearer <token>`.",
        }


def add_error_responses(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """Postprocessing hook: the Error component, and the common error statuses on
    every operation that does not already describe them."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "Error",
        {
            "type": "object",
            "properties": {
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "errors": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
            "required": ["detail", "code", "errors"],
        },
    )
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            errors = dict(COMMON_ERRORS)
            if "requestBody" in operation:
                errors["413"] = "The request body is too large."
            for code, description in errors.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                )
            # Answered by the HTTP server (gunicorn) before the application, not in JSON.
            responses.setdefault("414", {"description": "The request line (URL) is too long."})
    return result
