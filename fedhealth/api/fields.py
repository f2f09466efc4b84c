"""Serializer fields shared by the API's resources."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from fedhealth.api import parsers


def finite(value: Any) -> Any:
    """JSON-ready copy with NaN/Inf turned into null (strict JSON has no NaN; a metric
    that is undefined on some data, such as AUROC on one class, is stored as NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_object_text(data: Any, what: str = "a JSON object") -> Any:
    """A JSON object sent as JSON text inside a multipart form (a form field cannot hold
    an object): parsed with the API's depth limit; anything but an object is refused."""
    if isinstance(data, str):
        try:
            data = parsers.loads(data)
        except parsers.JSONTooDeep as exc:
            raise serializers.ValidationError(str(exc)) from None
        except ValueError:
            raise serializers.ValidationError("must be a JSON object") from None
    if not isinstance(data, dict):
        raise serializers.ValidationError(f"must be {what}")
    return data


def reject_nul(value: Any, field: str = "value") -> None:
    """NUL characters cannot be stored (PostgreSQL text and jsonb refuse them)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError(f"{field} must not contain NUL characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            reject_nul(k, field)
            reject_nul(v, field)
    elif isinstance(value, list):
        for v in value:
            reject_nul(v, field)


@extend_schema_field(OpenApiTypes.OBJECT)
class ReadJSONField(serializers.JSONField):
    """A read-only JSON object whose non-finite numbers are rendered as null."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        return finite(value)


class MetricsField(serializers.DictField):
    """Metric name -> number (or null where undefined)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("child", serializers.FloatField(allow_null=True))
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        return {
            str(k): (
                float(v)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                else None
            )
            for k, v in (value or {}).items()
        }


class FiniteFloatField(serializers.FloatField):
    """A float that must be finite ("nan" and "inf" strings are refused, naming the value)."""

    def to_internal_value(self, data: Any) -> float:
        try:  # DRF refuses these too, but as "A valid number is required." without the value
            number = float(data) if isinstance(data, str | int | float) and not isinstance(data, bool) else 0.0
        except (ValueError, OverflowError):
            number = 0.0
        if not math.isfinite(number):
            raise serializers.ValidationError(f"must be a finite number, got {data!r}")
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            raise serializers.ValidationError(f"must be a finite number, got {value!r}")
        return value
