"""Model selection by the sites' validation loss, and a version's self-description.

Each site that holds out a validation slice (``Experiment.validation_fraction``)
reports, with its evaluation of a version, the version's mean log loss on that slice
and the slice's rows (``validation_loss``, ``validation_n``; fedhealth.ml.sitework).
A version's validation loss is the row-weighted mean over the sites that reported
it; the best version is the one with the lowest, among versions scored by as many
sites as the best-covered one (a loss over two sites is not compared with one over
three).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedhealth.ml.model import ModelConfig
from fedhealth.ml.model_file import describe
from fedhealth.ml.schema import Schema
from fedhealth.ml.stats import Normalizer

from ..models import ModelVersion


def validation_summary(evaluations: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"validation_loss", "validation_sites"}`` from sites' evaluation metrics, or
    ``{}`` when none reported a validation loss."""
    total = rows = 0.0
    sites = 0
    for metrics in evaluations:
        loss, n = metrics.get("validation_loss"), metrics.get("validation_n")
        if loss is None or not n or not math.isfinite(float(loss)):
            continue
        total += float(loss) * float(n)
        rows += float(n)
        sites += 1
    if not sites:
        return {}
    return {"validation_loss": total / rows, "validation_sites": sites}


def best_version(versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The version with the lowest validation loss (the earliest on ties), among those
    scored by the most sites; None when no version has one."""
    scored = [v for v in versions if (v.metrics or {}).get("validation_loss") is not None]
    if not scored:
        return None
    coverage = max(v.metrics.get("validation_sites", 0) for v in scored)
    comparable = [v for v in scored if v.metrics.get("validation_sites", 0) == coverage]
    return min(comparable, key=lambda v: (v.metrics["validation_loss"], v.version))


def describe_version(
    version: ModelVersion,
    *,
    metrics: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
    best: bool | None = None,
) -> dict[str, str]:
    """The safetensors metadata that makes a downloaded version self-describing
    (``fedhealth.ml.load_model`` reads it): schema, normaliser, model configuration,
    experiment, round, the mean metrics the viewer may see (``metrics``, from the
    policy), the version's validation loss (only alongside those metrics, under the
    same disclosure rule) and the viewer's privacy guarantee when there is one."""
    experiment = version.experiment
    stored = version.metrics or {}
    validation = None
    if metrics and stored.get("validation_loss") is not None:
        validation = {
            "loss": stored["validation_loss"],
            "sites": stored.get("validation_sites"),
            "fraction": experiment.validation_fraction,
            "best": best,
        }
    return describe(
        schema=Schema.from_dict(version.schema),
        normalizer=Normalizer.from_dict(version.normalizer),
        model=ModelConfig.from_dict(version.model_config),
        experiment={"id": experiment.pk, "name": experiment.name, "strategy": experiment.strategy},
        round_number=version.version,
        metrics=metrics or None,
        privacy=privacy,
        validation=validation,
    )


__all__ = ["best_version", "describe_version", "validation_summary"]
