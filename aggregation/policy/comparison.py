"""Alone / global / personalised: who sees which of a site's end-of-experiment figures.

A site sees its own row (``SiteComparison``), in full, and a warning when the finished
global model did worse at its site than its local-only model. The coordinator sees the
same table in aggregate only: means over the sites that reported (each metric over
the sites where it is defined, with how many), how many sites the personalised model
beat alone, and at how many the global model was worse than alone; never which site.
Nothing aggregate is shown until at least ``FEDHEALTH_MIN_FIGURE_SITES`` sites
reported (``withheld`` says so), as for every other figure over sites.
"""

from __future__ import annotations

from typing import Any

from fedhealth.ml.metrics import defined_counts, json_safe, mean_metrics

from ..figure_words import defined
from ..models import Experiment, SiteComparison
from .figures import min_sites
from .viewer import Viewer

KINDS = (("alone", "alone"), ("global", "global_metrics"), ("personalized", "personalized"))


def lead(metrics: dict[str, Any] | None) -> float | None:
    """The figure a comparison is judged by: balanced accuracy, or accuracy where the
    site's test rows hold one class (balanced accuracy is undefined there)."""
    if not metrics:
        return None
    for key in ("balanced_accuracy", "accuracy"):
        if defined(metrics.get(key)):
            return float(metrics[key])
    return None


def beats(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether ``a`` scored above ``b`` by the same lead figure; None when either lacks one."""
    la, lb = lead(a), lead(b)
    if la is None or lb is None:
        return None
    if defined((a or {}).get("balanced_accuracy")) != defined((b or {}).get("balanced_accuracy")):
        return None  # one by balanced accuracy, the other by accuracy: not comparable
    return la > lb


def own_row(viewer: Viewer, experiment: Experiment) -> dict[str, Any] | None:
    """The viewer's own site's comparison, or None (a coordinator has no own row)."""
    if viewer.site is None:
        return None
    row = (
        SiteComparison.objects.filter(participant__experiment=experiment, participant__site_id=viewer.site_id)
        .select_related("version")
        .first()
    )
    if row is None:
        return None
    done = row.status == SiteComparison.Status.DONE
    figures = {kind: (getattr(row, field) if done else None) for kind, field in KINDS}
    return {
        "status": row.status,
        "mode": row.mode or None,
        "version": row.version.version if row.version else None,
        **figures,
        "error_code": row.error_code or "",
        "global_worse_than_alone": bool(done and beats(figures["alone"], figures["global"])),
        "personalized_beats_alone": beats(figures["personalized"], figures["alone"]) if done else None,
        "personal_model": bool(done and row.personal_file),
    }


def aggregate(experiment: Experiment) -> dict[str, Any]:
    """The coordinator's table: means over the sites that reported, the counts, never
    which site. Figures withheld below ``min_sites()`` reports."""
    rows = list(SiteComparison.objects.filter(participant__experiment=experiment))
    done = [r for r in rows if r.status == SiteComparison.Status.DONE]
    # Every site that took part is expected: an agent's row appears only when it reports.
    expected = experiment.participants.filter(consent="accepted").count()
    result: dict[str, Any] = {
        "sites": max(expected, len(rows)),
        "reported": len(done),
        "failed": sum(r.status == SiteComparison.Status.FAILED for r in rows),
        "withheld": len(done) < min_sites(),
        "mean": None,
        "defined": None,
        "personalized_beats_alone": None,
        "personalized_compared": None,
        "global_worse_than_alone": None,
    }
    if result["withheld"]:
        return result
    mean, counts = {}, {}
    for kind, field in KINDS:
        present = [getattr(r, field) for r in done if getattr(r, field)]
        mean[kind] = json_safe(mean_metrics(present)) if present else None
        counts[kind] = defined_counts(present) if present else {}
    personal = [beats(r.personalized, r.alone) for r in done]
    result.update(
        mean=mean,
        defined=counts,
        personalized_beats_alone=sum(p is True for p in personal),
        personalized_compared=sum(p is not None for p in personal),
        global_worse_than_alone=sum(beats(r.alone, r.global_metrics) is True for r in done),
    )
    return result


def comparison(viewer: Viewer, experiment: Experiment) -> dict[str, Any] | None:
    """What the viewer sees: a site its own row (``own_row``), the coordinator the
    aggregate; None before the experiment completed, for anyone else, or for a site
    without a row."""
    if experiment.status != Experiment.Status.COMPLETED:
        return None
    if viewer.is_coordinator:
        return aggregate(experiment)
    return own_row(viewer, experiment)
