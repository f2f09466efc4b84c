"""Predictions from a global model version: checked inputs in, probabilities out.

Inputs come from people (a form) or programs (a CSV, an API batch), so every value is
checked against the schema first and each problem is reported per record and field;
nothing is predicted from a batch that has any error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import ModelConfig
from .schema import Schema
from .stats import Normalizer
from .training import predict_proba
from .types import Weights


@dataclass(frozen=True)
class FieldError:
    """A bad input value: ``record`` is the 0-based index in the batch."""

    record: int
    field: str
    value: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "field": self.field, "value": self.value, "message": self.message}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def features_from_records(
    records: Sequence[Mapping[str, Any]], schema: Schema, *, max_errors: int = 100
) -> tuple[np.ndarray | None, list[FieldError]]:
    """Build X of shape (n, d) float32 in schema order, or return the field errors.

    Every feature must be present, numeric, finite and within the schema's range;
    extra keys (an ID column, say) are ignored.
    """
    errors: list[FieldError] = []
    if not records:
        return None, [FieldError(0, "", None, "no records to predict")]
    X = np.empty((len(records), len(schema.features)), dtype=np.float32)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            errors.append(FieldError(i, "", None, "each record must be an object of feature values"))
            continue
        for j, feature in enumerate(schema.features):
            raw = record.get(feature.name)
            value = _number(raw)
            if feature.name not in record or raw in (None, ""):
                errors.append(FieldError(i, feature.name, raw, f"{feature.name} is required"))
            elif value is None or not math.isfinite(value):
                errors.append(FieldError(i, feature.name, raw, f"{feature.name} must be a number, got {raw!r}"))
            elif (feature.min is not None and value < feature.min) or (
                feature.max is not None and value > feature.max
            ):
                unit = f" {feature.unit}" if feature.unit else ""
                errors.append(FieldError(
                    i, feature.name, raw,
                    f"{feature.name} must be between {feature.min:g} and {feature.max:g}{unit}, got {value:g}"
                    if feature.min is not None and feature.max is not None
                    else f"{feature.name} is out of range: {value:g}",
                ))
            else:
                X[i, j] = value
            if len(errors) >= max_errors:
                return None, errors
    return (None, errors) if errors else (X, [])


def predict(
    cfg: ModelConfig,
    weights: Weights,
    normalizer: Normalizer,
    X_raw: np.ndarray,
    *,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n,) of label 1 and labels (n,) 0/1 for raw (unnormalised) X (n, d)."""
    prob = predict_proba(cfg, weights, normalizer.transform(X_raw))
    return prob, (prob >= threshold).astype(np.int64)
