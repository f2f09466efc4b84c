"""Each site's privacy spend in an experiment, as each viewer may see it.

The coordinator sees every site's epsilon after each round and the noise it trained
with; a site sees its own only (another site's spend would tell its row count and how
often it trained). The experiment page, live.json and the API all read these rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from fedhealth.ml.privacy import composed_epsilon

from ..models import ClientUpdate, Experiment, ModelVersion, PrivacyLedgerEntry
from .viewer import Viewer


def privacy_rounds(viewer: Viewer, experiment: Experiment) -> list[dict[str, Any]]:
    """One row per site and round (the latest attempt's figures), ordered by site, round.

    ``epsilon`` is the experiment's spend at that site after the round (all its rounds so
    far composed), at ``delta``; ``noise_multiplier`` and ``clip_norm`` what it trained with.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    entries = PrivacyLedgerEntry.objects.filter(experiment=experiment).select_related(
        "dataset__site"
    )
    for e in entries.order_by("created_at", "pk"):
        site = e.dataset.site
        if not viewer.sees_site(site.pk):
            continue
        rows[(site.slug, e.round_number)] = {
            "site": site.slug,
            "round": e.round_number,
            "epsilon": e.epsilon_total,
            "epsilon_round": e.epsilon,
            "delta": e.delta,
            "noise_multiplier": e.noise_multiplier,
            "clip_norm": e.clip_norm,
            "reported_by": e.source,
            "consistency": e.consistency,
            "consistency_detail": e.consistency_detail,
        }
    return [rows[k] for k in sorted(rows)]


def guarantee(experiment: Experiment) -> str:
    """The guarantee an experiment asks of each site, in words ('' without DP)."""
    if experiment.dp_mode == Experiment.DPMode.SITE:
        delta = "1e-05" if experiment.dp_delta is None else f"{experiment.dp_delta:g}"
        return (
            f"({experiment.dp_epsilon:g}, {delta})-DP for each site's whole contribution over the "
            f"whole experiment (site-level DP-FedAvg: each site's change clipped to "
            f"{experiment.dp_clip_norm:g}, noise on the sum). It covers a hospital, not each "
            "patient more tightly; with a handful of hospitals this epsilon is large."
        )
    settings = experiment.privacy_settings
    if settings is None:
        return ""
    delta = "1/(10 x rows)" if settings.delta is None else f"{settings.delta:g}"
    return (
        f"({settings.epsilon:g}, {delta})-DP for each patient at each site over the whole "
        f"experiment (record-level DP-SGD, clip {settings.clip_norm:g}); each site's own "
        "budget may stop it earlier."
    )


def version_privacy(
    viewer: Viewer, versions: Iterable[ModelVersion]
) -> dict[int, dict[str, Any] | None]:
    """Each version's formal guarantee, by version pk (None: its experiment has no DP).

    A version made after round N carries, for each site, the composition of every spend
    that site recorded in this experiment for rounds 1..N (retries included: each
    attempt released fresh noise), at the largest delta among them. A site sees its own
    ``(epsilon, delta)``; the coordinator the worst case over the sites (largest epsilon,
    largest delta) and how many sites it covers, never which site reached it. An agent
    site's figures are what its agent reported (``mismatched_sites`` / ``consistent``:
    a report that does not follow from the settings). A site that
    sent an update in rounds 1..N without a recorded spend is counted in ``unaccounted``
    (the coordinator) or flagged ``accounted: False`` (its own view): no figure covers it.
    """
    versions = list(versions)
    out: dict[int, dict[str, Any] | None] = {}
    by_experiment: dict[int, list[ModelVersion]] = defaultdict(list)
    for v in versions:
        by_experiment[v.experiment_id].append(v)
    for experiment_id, group in by_experiment.items():
        experiment = group[0].experiment
        if experiment.dp_mode == Experiment.DPMode.SITE:
            out.update({v.pk: _site_level_at(v) for v in group})
            continue
        settings = experiment.privacy_settings
        if settings is None:
            out.update({v.pk: None for v in group})
            continue
        entries = [
            e
            for e in PrivacyLedgerEntry.objects.filter(experiment_id=experiment_id).select_related(
                "dataset"
            )
            if viewer.sees_site(e.dataset.site_id)
        ]
        sent = [
            (site_id, number)
            for site_id, number in ClientUpdate.objects.filter(
                round__experiment_id=experiment_id, status=ClientUpdate.Status.RECEIVED
            ).values_list("site_id", "round__number")
            if viewer.sees_site(site_id)
        ]
        for v in group:
            out[v.pk] = _guarantee_at(viewer, settings.clip_norm, v.round.number, entries, sent)
    return out


def _site_level_at(version: ModelVersion) -> dict[str, Any]:
    """Site-level DP: one figure for every site, the same for every viewer (it names no
    site and depends on no site's data): the round's composed epsilon, from the figures
    aggregation kept in the round's metrics."""
    figures = (version.round.metrics or {}).get("site_dp") or {}
    return {
        "round": version.round.number,
        "mechanism": "site-level DP-FedAvg",
        "scope": "each_site",
        "epsilon": figures.get("epsilon"),
        "delta": figures.get("delta"),
        "clip_norm": figures.get("clip_norm"),
        "noise_multiplier": figures.get("noise_multiplier"),
        "sample_rate": figures.get("sample_rate"),
        "noise_added_by": figures.get("noise_added_by"),
    }


def _guarantee_at(viewer: Viewer, clip_norm: float, number: int, entries, sent) -> dict[str, Any]:
    per_site: dict[int, list] = defaultdict(list)
    mismatched = set()
    for e in entries:
        if e.round_number <= number:
            per_site[e.dataset.site_id].append(e.spend())
            if e.consistency == PrivacyLedgerEntry.Check.MISMATCH:
                mismatched.add(e.dataset.site_id)
    figures = {
        site: (composed_epsilon(spends), max(s.delta for s in spends))
        for site, spends in per_site.items()
    }
    unaccounted = {site for site, n in sent if n <= number and site not in figures}
    base = {"round": number, "mechanism": "record-level DP-SGD", "clip_norm": clip_norm}
    if viewer.is_coordinator:
        return {
            **base,
            "scope": "worst_site",
            "epsilon": max((f[0] for f in figures.values()), default=None),
            "delta": max((f[1] for f in figures.values()), default=None),
            "sites": len(figures),
            "unaccounted_sites": len(unaccounted),
            "mismatched_sites": len(mismatched),
        }
    own = figures.get(viewer.site_id)
    return {
        **base,
        "scope": "own_site",
        "epsilon": own[0] if own else None,
        "delta": own[1] if own else None,
        "accounted": viewer.site_id not in unaccounted,
        "consistent": viewer.site_id not in mismatched,
    }


def guarantee_text(shown: dict[str, Any] | None) -> str:
    """One version's guarantee in words, from ``version_privacy``'s figures ('' without DP)."""
    if shown is None:
        return ""
    if shown["epsilon"] is None:
        return "No privacy spend recorded yet."
    if shown["scope"] == "each_site":
        return (
            f"({shown['epsilon']:.3g}, {shown['delta']:.2g})-DP for each site's whole contribution "
            f"(site-level DP-FedAvg), rounds 1-{shown['round']} composed."
        )
    figure = f"({shown['epsilon']:.3g}, {shown['delta']:.2g})-DP for each patient"
    if shown["scope"] == "own_site":
        text = f"{figure} at your site, rounds 1-{shown['round']} composed."
        if not shown["accounted"]:
            text += " Your site sent an update without a recorded spend: no figure covers it."
        if not shown.get("consistent", True):
            text += (
                " Your agent reported a spend that does not follow from the experiment's settings."
            )
        return text
    text = (
        f"{figure} at each site: the worst case over {shown['sites']} "
        f"site{'s' if shown['sites'] != 1 else ''}, rounds 1-{shown['round']} composed."
    )
    if shown["unaccounted_sites"]:
        n = shown["unaccounted_sites"]
        text += (
            f" {n} site{'s' if n != 1 else ''} sent updates without a recorded spend: not covered."
        )
    if shown.get("mismatched_sites"):
        n = shown["mismatched_sites"]
        text += (
            f" {n} agent site{'s' if n != 1 else ''} reported a spend that does not follow from "
            "the experiment's settings (as reported, not corrected)."
        )
    return text


__all__ = ["guarantee", "guarantee_text", "privacy_rounds", "version_privacy"]
