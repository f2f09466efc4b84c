"""Which aggregate figures a site may see, and failure reasons in the product's words.

See the package docstring for the reasoning; this module holds the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from fedhealth.ml.metrics import defined_counts, mean_metrics

from .. import reasons
from ..models import EvaluationAttempt, ModelVersion, Participant, SiteEvaluation
from .viewer import Viewer

CANCELLED_TEXT = "The experiment was cancelled."


def min_sites() -> int:
    """How many sites must stand behind an aggregate before a site may see it."""
    return settings.FEDHEALTH_MIN_FIGURE_SITES


def evaluation_deadline(version: ModelVersion) -> datetime:
    return version.created_at + timedelta(seconds=settings.FEDHEALTH_EVALUATION_GRACE_SECONDS)


# -- reasons -------------------------------------------------------------------------


def reason(viewer: Viewer, code: str, stored: str) -> dict[str, str] | None:
    """A failure reason as ``{"code", "text"}``, or None when nothing failed.

    The coordinator gets the stored product message (it may carry a product-made
    detail); anyone else gets the code's own text, and a legacy row without a code
    (its text may be anything, even an exception) reads as an internal error.
    """
    if not code and not stored:
        return None
    if viewer.is_coordinator:
        return {"code": code, "text": stored or reasons.text(code)}
    code = code or reasons.Reason.INTERNAL
    return {"code": code, "text": reasons.text(code)}


def ending(viewer: Viewer, code: str, stored: str, status: str) -> dict[str, str] | None:
    """Why a round or an experiment ended (failed or cancelled), per ``reason``, except
    that a legacy row without a code reads as what it is: a failed round or a cancellation."""
    if code or viewer.is_coordinator:
        return reason(viewer, code, stored)
    if not stored:
        return None
    if status == "cancelled":
        return {"code": "", "text": CANCELLED_TEXT}
    return {"code": reasons.Reason.ROUND_FAILED, "text": reasons.text(reasons.Reason.ROUND_FAILED)}


# -- a version's mean over the sites' evaluations --------------------------------------


@dataclass(frozen=True)
class VersionFigures:
    """A version's mean metrics as a site may see them.

    ``final``: the evaluations are closed (every expected site reported or gave up, or
    the evaluation deadline passed). ``published``: final and at least ``min_sites()``
    sites behind the mean; only then are ``mean`` and ``sites`` non-empty.
    """

    final: bool
    published: bool
    sites: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    # Per metric, how many of ``sites`` it is defined at (AUROC is not at a site whose
    # test rows hold one class): the page says "mean over 2 of 3 sites".
    defined: dict[str, int] = field(default_factory=dict)
    expected: int = 0  # the sites asked to evaluate (the coordinator's "2 of 3 sites")


def version_figures(
    versions: Iterable[ModelVersion], *, now: datetime | None = None
) -> dict[int, VersionFigures]:
    """``{version.pk: VersionFigures}`` in three queries, whatever the number of versions.

    The published mean is computed from the evaluations that had arrived at the moment
    of publication (the last expected report, or the deadline), never from later ones:
    a late report must not move a figure already shown, or the difference would be
    that site's own figures.
    """
    versions = list(versions)
    if not versions:
        return {}
    now = now or timezone.now()
    ids = [v.pk for v in versions]
    expected: dict[int, set[int]] = {}
    # Sites that accepted are asked to evaluate; one that never accepted never is.
    for exp_id, site_id in Participant.objects.filter(
        experiment_id__in={v.experiment_id for v in versions}, consent=Participant.Consent.ACCEPTED
    ).values_list("experiment_id", "site_id"):
        expected.setdefault(exp_id, set()).add(site_id)
    given_up: dict[int, dict[int, datetime]] = {}
    for vid, site_id, at in EvaluationAttempt.objects.filter(
        version_id__in=ids, status=EvaluationAttempt.Status.FAILED
    ).values_list("version_id", "site_id", "updated_at"):
        given_up.setdefault(vid, {})[site_id] = at
    reported: dict[int, list[tuple[int, datetime, dict]]] = {}
    for vid, site_id, at, metrics in SiteEvaluation.objects.filter(version_id__in=ids).values_list(
        "version_id", "site_id", "created_at", "metrics"
    ):
        reported.setdefault(vid, []).append((site_id, at, metrics))
    out = {}
    for v in versions:
        out[v.pk] = _figures(
            v,
            expected.get(v.experiment_id, set()),
            reported.get(v.pk, []),
            given_up.get(v.pk, {}),
            now,
        )
    return out


def _figures(
    version: ModelVersion,
    expected: set[int],
    reported: list[tuple[int, datetime, dict]],
    given_up: dict[int, datetime],
    now: datetime,
) -> VersionFigures:
    deadline = evaluation_deadline(version)
    # When each site stopped being awaited: its report, or its evaluation given up,
    # whichever came first (a report after a give-up must not move the publication).
    closed_at: dict[int, datetime] = dict(given_up)
    for s, at, _ in reported:
        closed_at[s] = min(closed_at.get(s, at), at)
    if expected and expected <= set(closed_at) and max(closed_at[s] for s in expected) <= deadline:
        publish_at = max(closed_at[s] for s in expected)
    elif now >= deadline:
        publish_at = deadline
    else:
        return VersionFigures(final=False, published=False, expected=len(expected))
    used = [m for _, at, m in reported if at <= publish_at]
    if len(used) < min_sites():
        return VersionFigures(final=True, published=False, expected=len(expected))
    counts = defined_counts(used)
    mean = mean_metrics(used)
    # A mean over fewer sites than the figure limit would let a site that knows its own
    # figure work out another's (AUROC over 2 sites, one of them itself): withheld (null).
    mean = {k: (v if k == "n" or counts.get(k, 0) >= min_sites() else None) for k, v in mean.items()}
    return VersionFigures(final=True, published=True, sites=len(used), mean=mean, defined=counts,
                          expected=len(expected))


# -- a round's sums and means over sites -------------------------------------------------


def round_metrics(viewer: Viewer, metrics: dict[str, Any], all_sites: set[str]) -> dict[str, Any]:
    """A completed round's figures (``Round.metrics``) as ``viewer`` may see them.

    ``all_sites``: the slugs of every participant. A site sees whether its own update
    was accepted or rejected and why; the training loss when at least ``min_sites()``
    updates were combined; the sample total only when, in addition, every participant
    was accepted (so every such total is the same sum and no two differ by one site).
    """
    if viewer.is_coordinator:
        return dict(metrics)
    own = viewer.site_slug
    accepted = [s for s in metrics.get("accepted") or [] if isinstance(s, str)]
    out: dict[str, Any] = {
        "accepted": [s for s in accepted if s == own],
        "rejected": [
            _own_rejection(viewer, r)
            for r in metrics.get("rejected") or []
            if isinstance(r, dict) and r.get("site") == own
        ],
    }
    if "kept_previous_model" in metrics:
        out["kept_previous_model"] = bool(metrics["kept_previous_model"])
    if metrics.get("refused"):
        out["refused"] = reasons.text(reasons.Reason.AGGREGATE_INVALID)
    if len(set(accepted)) >= min_sites():
        out["train_loss"] = metrics.get("train_loss")
        if set(accepted) == all_sites:
            out["num_samples"] = metrics.get("num_samples")
    return out


def _own_rejection(viewer: Viewer, entry: dict[str, Any]) -> dict[str, str]:
    why = reason(viewer, entry.get("code") or "", entry.get("reason") or "") or reason(
        viewer, "", "-"
    )
    return {"site": viewer.site_slug or "", "code": why["code"], "reason": why["text"]}
