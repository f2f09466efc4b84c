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

from fedhealth.ml.config import ModelConfig
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


def reported_validation_problem(
    metrics: Mapping[str, float], *, validation_fraction: float, test_fraction: float, rows: int
) -> str | None:
    """What is wrong with the validation figures a site sent with its evaluation, or None.

    An experiment with a validation slice needs both ``validation_loss`` and
    ``validation_n`` from every site (so that agents count in the selection exactly as
    hosted sites do), and ``validation_n`` must be the slice the experiment's fraction
    gives the site's registered ``rows``: a site cannot weigh its loss above its rows.
    Without a slice neither may be sent. Ranges (finite, non-negative, bounded) are the
    serializer's (``aggregation.api.agent_serializers``).
    """
    sent = [k for k in ("validation_loss", "validation_n") if k in metrics]
    if validation_fraction <= 0:
        if sent:
            return f"this experiment holds out no validation slice: omit {' and '.join(sent)}"
        return None
    if len(sent) < 2:
        return (
            f"this experiment holds out a validation slice ({validation_fraction:g} of the training "
            "rows): send validation_loss and validation_n with the evaluation"
        )
    from fedhealth.ml.sitework import validation_rows  # the core's site work imports torch

    try:
        expected = validation_rows(rows, test_fraction=test_fraction, validation_fraction=validation_fraction)
    except ValueError:
        return f"the site's {rows} registered rows cannot hold a validation slice"
    if metrics["validation_n"] != expected:
        return (
            f"metric 'validation_n' must be the {expected} rows of this site's validation slice "
            f"(of its {rows} registered rows), got {metrics['validation_n']!r}"
        )
    return None


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
    from fedhealth.ml.model_file import describe  # imports torch: on use only

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


__all__ = ["best_version", "describe_version", "reported_validation_problem", "validation_summary"]
