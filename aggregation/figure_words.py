"""How figures are written on every page, API and export (issue 10, honest figures).

* An undefined metric (a site whose test rows hold one class has no AUROC) is stored as
  null and written "n/a", never 0, "nan" or a blank that reads as "not computed yet".
* Balanced accuracy and AUROC lead: with unbalanced classes plain accuracy rewards a
  model that always says the majority class.
* The threshold metrics are the schema's positive class's, and say so in words
  ("sensitivity: unhealthy patients flagged").
* A mean over sites says over how many, when some sites lack the metric.
"""

from __future__ import annotations

import math
from typing import Any

from fedhealth.ml.schema import Schema

NA = "n/a"
CHANCE = 0.5  # balanced accuracy and AUROC of a model that guesses

# Leading figures first, in the order pages show them.
LEAD_METRICS = ("balanced_accuracy", "auroc")
METRIC_LABELS = {
    "balanced_accuracy": "Balanced accuracy",
    "auroc": "AUROC",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1",
    "brier": "Brier score",
    "log_loss": "Log loss",
    "loss": "Loss",
}


def defined(value: Any) -> bool:
    return (
        value is not None
        and not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
    )


def metric_text(value: Any, digits: int = 3) -> str:
    """``0.812`` for a number, ``"n/a"`` for None, NaN, infinity or anything else."""
    return f"{value:.{digits}f}" if defined(value) else NA


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " ").capitalize())


def class_words(schema: Schema | dict | None) -> dict[str, str]:
    """What the threshold metrics mean for this schema's positive class, in words."""
    if not isinstance(schema, Schema):
        schema = Schema.from_dict(schema or {"features": [{"name": "x"}]})
    pos, neg = schema.positive_name, schema.negative_name
    return {
        "positive": pos,
        "negative": neg,
        "positive_rule": f"{schema.label} = {schema.positive_value}",
        "sensitivity": f"sensitivity: {pos} patients flagged",
        "specificity": f"specificity: {neg} patients passed",
        "precision": f"precision: flagged patients who are {pos}",
        "f1": f"F1 for {pos}",
        "roc": f"true positive rate: {pos} patients flagged",
        "statement": (
            f"Positive class: {pos} ({schema.label} = {schema.positive_value}). Sensitivity is the share "
            f"of {pos} patients the model flags, specificity the share of {neg} patients it passes."
        ),
    }


def mean_note(key: str, defined_count: int | None, total: int | None) -> str:
    """"mean over 2 of 3 sites" when the metric is undefined at some sites, else ""."""
    if defined_count is None or not total or defined_count >= total:
        return ""
    return f"mean over {defined_count} of {total} sites"


def prevalence(positive_rows: int, rows: int) -> float | None:
    """The share of rows in the positive class (None without rows)."""
    return positive_rows / rows if rows else None


def worse_than_chance(mean: dict[str, Any]) -> list[str]:
    """The leading figures of a model that fall below chance, in words (empty: none)."""
    return [
        f"{metric_label(key)} {metric_text(mean.get(key))} is below chance ({CHANCE:.1f})"
        for key in LEAD_METRICS
        if defined(mean.get(key)) and mean[key] < CHANCE
    ]
