"""Filtering list endpoints by plain query parameters (no extra dependency).

A view declares ``filter_params = {"status": Param("status", choices=...),
"experiment": Param("experiment_id", int)}``; :class:`QueryParamFilter` applies the
ones present, answers 400 naming the parameter on a bad value, and describes them
in the OpenAPI schema.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend

_SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")
# The largest id a database integer key holds (PostgreSQL bigint; SQLite refuses more).
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Param:
    """One query parameter: the ORM lookup it filters on and the values it takes."""

    lookup: str
    type: str = "int"  # "int", "slug", "bool" or "choice"
    choices: Sequence[str] = ()
    description: str = ""

    def parse(self, name: str, raw: str) -> Any:
        if self.type == "int":
            if not raw.isdigit() or not 0 < int(raw) <= MAX_ID:
                raise ValidationError({name: [f"must be a positive integer, got {raw[:50]!r}"]})
            return int(raw)
        if self.type == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValidationError({name: ["must be true or false"]})
            return raw.lower() in ("true", "1")
        if self.type == "slug":
            if not _SLUG.match(raw):
                raise ValidationError({name: ["must be a site slug (letters, digits, - and _)"]})
            return raw
        if raw not in self.choices:
            raise ValidationError({name: [f"must be one of {', '.join(self.choices)}"]})
        return raw

    def openapi(self, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "int": {"type": "integer", "minimum": 1},
            "bool": {"type": "boolean"},
            "slug": {"type": "string", "pattern": _SLUG.pattern},
            "choice": {"type": "string", "enum": list(self.choices)},
        }[self.type]
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": schema,
        }


class QueryParamFilter(BaseFilterBackend):
    """Applies a view's ``filter_params`` on list actions."""

    def filter_queryset(self, request, queryset, view):
        if getattr(view, "action", None) != "list":
            return queryset
        lookups = {}
        for name, param in getattr(view, "filter_params", {}).items():
            raw = request.query_params.get(name)
            if raw is not None and raw != "":
                lookups[param.lookup] = param.parse(name, raw)
        return queryset.filter(**lookups) if lookups else queryset

    def get_schema_operation_parameters(self, view):
        return [param.openapi(name) for name, param in getattr(view, "filter_params", {}).items()]
