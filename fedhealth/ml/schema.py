"""Feature schemas: which columns a training CSV holds, in which order, with which ranges.

A schema is plain data (JSON round-trippable), so a federation can store it next to its
experiment and every site validates and loads its rows in the same feature order. Nothing
here knows about the four default vitals except ``DEFAULT_SCHEMA``: a 13- or 30-feature
schema built with :meth:`Schema.from_columns` works everywhere the default one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SchemaError(ValueError):
    """A schema (or its dict form) is inconsistent; the message says what and where."""


@dataclass(frozen=True)
class Feature:
    """One numeric input column; ``min``/``max`` are inclusive bounds in ``unit`` (None = open)."""

    name: str
    unit: str = ""
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise SchemaError(
                f"feature name {self.name!r} must be a non-empty string without "
                "surrounding whitespace"
            )
        if not isinstance(self.unit, str):
            raise SchemaError(f"feature {self.name!r}: unit must be a string")
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SchemaError(f"feature {self.name!r}: {bound} must be a number or null")
            if not math.isfinite(value):
                raise SchemaError(f"feature {self.name!r}: {bound} must be finite, got {value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise SchemaError(
                f"feature {self.name!r}: min {self.min} is greater than max {self.max}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"name", "unit", "min", "max"}``."""
        return {"name": self.name, "unit": self.unit, "min": self.min, "max": self.max}


_FEATURE_KEYS = frozenset({"name", "unit", "min", "max"})
_SCHEMA_KEYS = frozenset({"features", "label"})


@dataclass(frozen=True)
class Schema:
    """Ordered numeric features plus the name of the binary (0/1) label column."""

    features: tuple[Feature, ...]
    label: str = "healthy"

    def __post_init__(self) -> None:
        # Accept any sequence (e.g. a list) but store a tuple so the schema stays hashable.
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise SchemaError("a schema needs at least one feature")
        for feature in self.features:
            if not isinstance(feature, Feature):
                raise SchemaError(f"features must be Feature objects, got {type(feature).__name__}")
        if not isinstance(self.label, str) or not self.label or self.label != self.label.strip():
            raise SchemaError(
                f"label {self.label!r} must be a non-empty string without surrounding whitespace"
            )
        names = self.feature_names
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SchemaError(f"duplicate feature names: {', '.join(duplicates)}")
        if self.label in names:
            raise SchemaError(f"label {self.label!r} is also listed as a feature")

    @property
    def feature_names(self) -> list[str]:
        """Feature column names in model input order."""
        return [feature.name for feature in self.features]

    @property
    def columns(self) -> list[str]:
        """Every required CSV column: the features in order, then the label."""
        return [*self.feature_names, self.label]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return {"features": [f.to_dict() for f in self.features], "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        """Build a schema from its dict form; raises :class:`SchemaError` on a bad dict.

        Unknown keys are rejected so that a typo such as ``"maximum"`` does not silently
        drop a range check.
        """
        if not isinstance(d, Mapping):
            raise SchemaError(f"schema must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - _SCHEMA_KEYS)
        if unknown:
            raise SchemaError(f"unknown schema keys: {', '.join(map(str, unknown))}")
        raw_features = d.get("features")
        if not isinstance(raw_features, Sequence) or isinstance(raw_features, str | bytes):
            raise SchemaError("schema 'features' must be a list of feature objects")
        features = []
        for i, raw in enumerate(raw_features):
            if not isinstance(raw, Mapping):
                raise SchemaError(f"features[{i}] must be an object, got {type(raw).__name__}")
            unknown = sorted(set(raw) - _FEATURE_KEYS)
            if unknown:
                raise SchemaError(f"features[{i}]: unknown keys: {', '.join(map(str, unknown))}")
            if "name" not in raw:
                raise SchemaError(f"features[{i}] has no 'name'")
            try:
                features.append(
                    Feature(
                        name=raw["name"],
                        unit=raw.get("unit", ""),
                        min=raw.get("min"),
                        max=raw.get("max"),
                    )
                )
            except SchemaError as exc:
                raise SchemaError(f"features[{i}]: {exc}") from None
        return cls(features=tuple(features), label=d.get("label", "healthy"))

    @classmethod
    def from_columns(cls, features: Sequence[str], label: str = "healthy") -> Schema:
        """A schema with the given feature names, no units and no range checks."""
        if isinstance(features, str):
            raise SchemaError("features must be a sequence of names, not a single string")
        return cls(features=tuple(Feature(name=name) for name in features), label=label)


DEFAULT_SCHEMA = Schema(
    features=(
        Feature("heart_rate", unit="bpm", min=50.0, max=120.0),
        Feature("systolic_bp", unit="mmHg", min=90.0, max=160.0),
        Feature("diastolic_bp", unit="mmHg", min=60.0, max=100.0),
        Feature("spo2", unit="%", min=90.0, max=100.0),
    ),
    label="healthy",
)
