"""Feature schemas: which columns a training CSV holds, in which order, with which ranges.

A schema is plain data (JSON round-trippable), so a federation can store it next to its
experiment and every site validates and loads its rows in the same feature order. Nothing
here knows about the four default vitals except ``DEFAULT_SCHEMA``: a 13- or 30-feature
schema built with :meth:`Schema.from_columns` works everywhere the default one does.

Each feature has two ranges. The *expected* range (``min``/``max``) is where most
patients fall: a value outside it is counted and flagged in the validation report, and
kept (refusing a heart rate of 130 would bias every dataset toward healthy patients).
The *hard limits* (``hard_min``/``hard_max``) bound what is physically possible in the
unit (an SpO2 above 100 %, a heart rate of 0): a value outside them is a unit mistake or
a typo, and the row is rejected. A stored schema from before hard limits (only
``min``/``max``) reads as an expected range with no hard limits.

The schema also names the *positive class*: the label value the model is meant to
detect (for the default vitals, ``healthy = 0``, "unhealthy"). Sensitivity, precision,
F1, ROC curves and confusion matrices are computed for that class.
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
    """One numeric input column, bounds inclusive in ``unit`` (None = open).

    ``min``/``max``: the expected range (outside: flagged, kept); ``hard_min``/``hard_max``:
    the hard limits (outside: the row is rejected). The hard limits must contain the
    expected range.
    """

    name: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    hard_min: float | None = None
    hard_max: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise SchemaError(
                f"feature name {self.name!r} must be a non-empty string without "
                "surrounding whitespace"
            )
        if not isinstance(self.unit, str):
            raise SchemaError(f"feature {self.name!r}: unit must be a string")
        for bound in ("min", "max", "hard_min", "hard_max"):
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
        if (
            self.hard_min is not None
            and self.hard_max is not None
            and self.hard_min > self.hard_max
        ):
            raise SchemaError(
                f"feature {self.name!r}: hard_min {self.hard_min} is greater than hard_max {self.hard_max}"
            )
        # An expected value the hard limits would reject makes no sense: say which bound.
        for expected, hard, below in (
            ("min", "hard_min", True),
            ("max", "hard_max", False),
            ("min", "hard_max", False),
            ("max", "hard_min", True),
        ):
            e, h = getattr(self, expected), getattr(self, hard)
            if e is not None and h is not None and (e < h if below else e > h):
                raise SchemaError(
                    f"feature {self.name!r}: expected {expected} {e:g} is outside the hard "
                    f"limit {hard} {h:g}"
                )

    @property
    def expected(self) -> tuple[float | None, float | None]:
        """The expected range ``(min, max)``."""
        return self.min, self.max

    @property
    def hard(self) -> tuple[float | None, float | None]:
        """The hard limits ``(hard_min, hard_max)``."""
        return self.hard_min, self.hard_max

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"name", "unit", "min", "max", "hard_min", "hard_max"}``."""
        return {
            "name": self.name,
            "unit": self.unit,
            "min": self.min,
            "max": self.max,
            "hard_min": self.hard_min,
            "hard_max": self.hard_max,
        }


_FEATURE_KEYS = frozenset({"name", "unit", "min", "max", "hard_min", "hard_max"})
_SCHEMA_KEYS = frozenset({"features", "label", "positive"})
_POSITIVE_KEYS = frozenset({"value", "name", "other"})
MAX_CLASS_NAME = 64


@dataclass(frozen=True)
class PositiveClass:
    """The label value the model is meant to detect, and what to call it on pages."""

    value: int = 1
    name: str = ""
    other: str = ""  # what to call the other class ("healthy"); empty: "<label> = <value>"

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or self.value not in (0, 1):
            raise SchemaError(f"positive value must be 0 or 1, got {self.value!r}")
        for key in ("name", "other"):
            text = getattr(self, key)
            if not isinstance(text, str) or len(text) > MAX_CLASS_NAME or "\x00" in text:
                raise SchemaError(
                    f"positive {key} must be text of at most {MAX_CLASS_NAME} characters"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "other": self.other}


@dataclass(frozen=True)
class Schema:
    """Ordered numeric features, the name of the binary (0/1) label column, and which of
    its values is the positive class (the condition to detect)."""

    features: tuple[Feature, ...]
    label: str = "healthy"
    positive: PositiveClass = PositiveClass()

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
        if not isinstance(self.positive, PositiveClass):
            raise SchemaError("positive must be a PositiveClass")

    @property
    def positive_value(self) -> int:
        """The label value of the positive class (0 or 1)."""
        return self.positive.value

    @property
    def positive_name(self) -> str:
        """The positive class as pages say it: its name, else ``"<label> = <value>"``."""
        return self.positive.name or f"{self.label} = {self.positive.value}"

    @property
    def negative_name(self) -> str:
        """The other class: its name, else ``"<label> = <other value>"``."""
        return self.positive.other or f"{self.label} = {1 - self.positive.value}"

    def class_name(self, value: int) -> str:
        """What to call the class with label ``value`` (0 or 1)."""
        return self.positive_name if value == self.positive.value else self.negative_name

    def same_columns(self, other: Schema) -> bool:
        """Whether rows checked against ``other`` have this schema's columns in its order
        and the same label: ranges and the positive class may differ."""
        return self.feature_names == other.feature_names and self.label == other.label

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
        return {
            "features": [f.to_dict() for f in self.features],
            "label": self.label,
            "positive": self.positive.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        """Build a schema from its dict form; raises :class:`SchemaError` on a bad dict.

        Unknown keys are rejected so that a typo such as ``"maximum"`` does not silently
        drop a range check. A dict from before hard limits and the positive class (only
        ``min``/``max``, no ``positive``) reads as expected ranges without hard limits and
        positive class ``label = 1``: what its figures were computed for.
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
                        hard_min=raw.get("hard_min"),
                        hard_max=raw.get("hard_max"),
                    )
                )
            except SchemaError as exc:
                raise SchemaError(f"features[{i}]: {exc}") from None
        return cls(
            features=tuple(features),
            label=d.get("label", "healthy"),
            positive=_positive_from(d.get("positive")),
        )

    @classmethod
    def from_columns(cls, features: Sequence[str], label: str = "healthy") -> Schema:
        """A schema with the given feature names, no units and no range checks."""
        if isinstance(features, str):
            raise SchemaError("features must be a sequence of names, not a single string")
        return cls(features=tuple(Feature(name=name) for name in features), label=label)


def _positive_from(raw: Any) -> PositiveClass:
    if raw is None:
        return PositiveClass()
    if not isinstance(raw, Mapping):
        raise SchemaError(f"positive must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _POSITIVE_KEYS)
    if unknown:
        raise SchemaError(f"positive: unknown keys: {', '.join(map(str, unknown))}")
    return PositiveClass(
        value=raw.get("value", 1), name=raw.get("name", ""), other=raw.get("other", "")
    )


# The expected ranges are the seed's (a resting adult); the hard limits are what a monitor
# can show in the unit (a heart rate of 0 or 400, an SpO2 of 101 % is a typo or the wrong
# column). The condition to detect is "not healthy".
DEFAULT_SCHEMA = Schema(
    features=(
        Feature("heart_rate", unit="bpm", min=50.0, max=120.0, hard_min=20.0, hard_max=300.0),
        Feature("systolic_bp", unit="mmHg", min=90.0, max=160.0, hard_min=40.0, hard_max=300.0),
        Feature("diastolic_bp", unit="mmHg", min=60.0, max=100.0, hard_min=20.0, hard_max=200.0),
        Feature("spo2", unit="%", min=90.0, max=100.0, hard_min=50.0, hard_max=100.0),
    ),
    label="healthy",
    positive=PositiveClass(value=0, name="unhealthy", other="healthy"),
)
