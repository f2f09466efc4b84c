"""Whether a dataset can train under an experiment's schema.

A dataset is validated once, at upload (or by its agent), against the schema it was
stored with. An experiment may carry its own copy of the schema with other expected
ranges, hard limits or positive class (issue 10: both ranges are data, editable per
experiment). What must match is the columns: the same features in the same order and
the same label. The experiment's hard limits must also hold for the dataset's rows,
which the server checks from the dataset's summary (each feature's minimum and
maximum, never a row): a value the experiment calls impossible is refused by name.
Expected ranges and the positive class may differ freely: they only flag and label.
"""

from __future__ import annotations

from typing import Any

from clients.models import Dataset
from fedhealth.ml.schema import Schema, SchemaError


def fit_problems(dataset: Dataset, schema: dict[str, Any] | Schema) -> list[str]:
    """Why ``dataset`` cannot train under ``schema`` (empty: it can)."""
    wanted = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
    where = f"dataset {dataset.pk} ({dataset.site.slug}/{dataset.name})"
    try:
        own = Schema.from_dict(dataset.schema or {})
    except SchemaError:
        return [f"{where} has no usable schema"]
    if not own.same_columns(wanted):
        return [f"{where} has a different schema from the experiment (columns "
                f"{', '.join(own.columns)}; the experiment needs {', '.join(wanted.columns)})"]
    problems = []
    summary = dataset.summary or {}
    for feature in wanted.features:
        entry = summary.get(feature.name) or {}
        low, high = entry.get("min"), entry.get("max")
        unit = f" {feature.unit}" if feature.unit else ""
        if feature.hard_min is not None and isinstance(low, int | float) and low < feature.hard_min:
            problems.append(f"{where}: {feature.name} has values down to {low:g}{unit}, below the "
                            f"experiment's hard limit {feature.hard_min:g}{unit}")
        if feature.hard_max is not None and isinstance(high, int | float) and high > feature.hard_max:
            problems.append(f"{where}: {feature.name} has values up to {high:g}{unit}, above the "
                            f"experiment's hard limit {feature.hard_max:g}{unit}")
    return problems
