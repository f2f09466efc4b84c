"""Which global model version of an experiment a person should use by default.

The recommended version of a finished experiment is its best version by the sites'
validation loss (``selection.best_version``) when its sites held out validation
slices, else its last one. Every version of a running or paused experiment is a
mid-run model that a later round may still replace, so none is recommended. The
predict page's picker, the model list's button and the README's example follow this.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..models import Experiment, ModelVersion
from .selection import best_version


def recommended_version(experiment: Experiment, versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The version to offer first for ``experiment`` among ``versions`` (the caller's
    visible ones of that experiment), or None while the experiment still runs."""
    if experiment.status not in Experiment.FINISHED:
        return None
    own = [v for v in versions if v.experiment_id == experiment.pk]
    return best_version(own) or max(own, key=lambda v: v.version, default=None)


def default_version(versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The picker's default among ``versions`` (with their experiments loaded): the
    recommended version of the most recently completed experiment, else of the most
    recently failed or cancelled one; only when no experiment has finished, the newest
    version, mid-run as it is."""
    versions = list(versions)
    experiments = {v.experiment_id: v.experiment for v in versions}
    finished = sorted(
        (e for e in experiments.values() if e.status in Experiment.FINISHED),
        key=lambda e: (e.status == Experiment.Status.COMPLETED, e.finished_at is not None, e.finished_at, e.pk),
        reverse=True,
    )
    for experiment in finished:
        chosen = recommended_version(experiment, versions)
        if chosen is not None:
            return chosen
    return max(versions, key=lambda v: (v.created_at, v.pk), default=None)


__all__ = ["default_version", "recommended_version"]
