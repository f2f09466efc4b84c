"""Honest figures for an experiment's pages: the positive class in words, the prevalence
behind the chance lines, which chart points are still being scored, and a warning when a
finished model does worse than chance (issue 10).

Every figure here comes through the policy (``aggregation/policy``) or the caller's scoped
querysets: the coordinator's prevalence pools every participant's label balance (which it
sees anyway); a site's is its own dataset's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clients.models import Dataset

from .. import policy
from ..figure_words import class_words, metric_text, worse_than_chance
from ..models import Experiment
from ..permissions import visible_evaluations


def prevalence(experiment: Experiment, viewer: policy.Viewer) -> float | None:
    """Share of the positive class in the rows behind the viewer's figures: every
    participant's datasets for the coordinator, the viewer's own site's otherwise."""
    positive = experiment.schema_obj.positive_value
    datasets = Dataset.objects.filter(participant__experiment=experiment)
    if not viewer.is_coordinator:
        datasets = datasets.filter(site_id=viewer.site_id) if viewer.site_id else datasets.none()
    rows = pos = 0
    for row_count, positive_count in datasets.values_list("row_count", "positive_count"):
        rows += row_count
        pos += positive_count if positive == 1 else row_count - positive_count
    return pos / rows if rows else None


def partial_points(shown: list[tuple[int, dict[str, Any]]]) -> dict[int, str]:
    """Rounds whose mean is still being scored, and how far ("2 of 3 sites").

    Only the coordinator follows a running mean; a site's points appear once final.
    """
    return {
        n: f"{m.get('sites_reported', 0)} of {m.get('sites_expected') or '?'} sites"
        for n, m in shown
        if m.get("mean") and not m.get("final")
    }


@dataclass
class Quality:
    words: dict[str, str]
    prevalence: float | None
    warnings: list[str] = field(default_factory=list)

    @property
    def prevalence_text(self) -> str:
        if self.prevalence is None:
            return ""
        return f"{self.prevalence:.0%} of patients are {self.words['positive']}"


def experiment_quality(experiment: Experiment, user, shown: list[tuple[int, dict[str, Any]]]) -> Quality:
    """``shown``: (version, ``policy.version_metrics``) in version order, as the viewer sees them."""
    viewer = policy.viewer_of(user)
    quality = Quality(class_words(experiment.schema_obj), prevalence(experiment, viewer))
    if experiment.status != Experiment.Status.COMPLETED or not shown:
        return quality
    number, last = shown[-1]
    if last.get("final") and (below := worse_than_chance(last.get("mean") or {})):
        quality.warnings.append(f"The final model (v{number}) does worse than chance on the sites' test data: "
                                + "; ".join(below) + ". Do not use it for decisions.")
    # A site also hears about its own test rows (its own figures, never another's).
    if not viewer.is_coordinator:
        own = (visible_evaluations(user).filter(version__experiment=experiment, version__version=number)
               .values_list("metrics", flat=True).first())
        if own and (below := worse_than_chance(own)):
            quality.warnings.append(f"At your site, the final model (v{number}) does worse than chance: "
                                    + "; ".join(below) + ".")
    return quality


__all__ = ["Quality", "experiment_quality", "metric_text", "partial_points", "prevalence"]
