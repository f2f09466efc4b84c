"""One representation per object kind and viewer: the API, the pages, the exports and
live.json all build what they show from these functions."""

from __future__ import annotations

from typing import Any

from ..models import ClientUpdate, Experiment, ModelVersion, Round, SecureRound, SiteEvaluation
from .comparison import comparison
from .figures import VersionFigures, ending, reason, round_metrics, version_figures
from .privacy import privacy_rounds, version_privacy
from .viewer import Viewer

# An experiment's training configuration (the API's read and create serializers list
# the same fields).
CONFIG_FIELDS = [
    "hidden_layers",
    "dropout",
    "strategy",
    "strategy_params",
    "num_rounds",
    "local_epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "min_sites",
    "fraction_fit",
    "round_timeout",
    "test_fraction",
    "validation_fraction",
    "seed",
    "dp_mode",
    "dp_epsilon",
    "dp_delta",
    "dp_clip_norm",
    "secure_aggregation",
    "secagg_threshold",
    "personalize",
    "early_stopping",
]
# Log fields a site may see as they are; anything else in an event (present or added
# later) is dropped for a site unless a rule below rebuilds it.
_PLAIN_LOG_FIELDS = ("event", "round", "at", "version", "sha256", "config", "kept_previous_model")


def participant_slugs(experiment: Experiment) -> set[str]:
    return {p.site.slug for p in experiment.participants.all()}


def participants(viewer: Viewer, experiment: Experiment) -> list[dict[str, Any]]:
    """Every participant, with its consent, for the coordinator; a site sees its own
    participation only (also in a draft: who else is asked, and what they decided, is
    the coordinator's business)."""
    from ..services.consent import state, terms_hash

    rows = sorted(experiment.participants.all(), key=lambda p: p.site.slug)
    current = terms_hash(experiment)
    return [
        {
            "site": p.site.slug,
            "dataset": p.dataset_id,
            "consent": state(p, current),
            "decided_at": p.decided_at,
            "decline_reason": p.decline_reason,
            "withdrawn_from_round": p.withdrawn_from_round,
        }
        for p in rows
        if viewer.sees_site(p.site_id)
    ]


def experiment(viewer: Viewer, obj: Experiment) -> dict[str, Any]:
    numbers = [r.number for r in obj.rounds.all()]
    why = ending(viewer, obj.failure_code, obj.failure_reason, obj.status)
    # A site learns how many sites take part (accepted) once the experiment runs, never who.
    count = (
        None
        if obj.status == Experiment.Status.DRAFT and not viewer.is_coordinator
        else obj.participants.filter(consent="accepted").count()
    )
    return {
        "id": obj.pk,
        "name": obj.name,
        "description": obj.description,
        "status": obj.status,
        "failure_reason": why["text"] if why else "",
        "failure_code": why["code"] if why else "",
        "schema": obj.schema,
        **{name: getattr(obj, name) for name in CONFIG_FIELDS},
        "participants": participants(viewer, obj),
        "num_sites": count,
        "normalizer": obj.normalizer,
        "current_round": max(numbers) if numbers else None,
        "privacy": privacy_rounds(viewer, obj) if obj.dp_mode != Experiment.DPMode.OFF else [],
        # Why it finished before its last round (early stopping), in the product's words.
        "finish_code": obj.finish_code,
        "stopped_after_round": obj.stopped_after_round,
        "comparison": comparison(viewer, obj),
        "created_at": obj.created_at,
        "started_at": obj.started_at,
        "finished_at": obj.finished_at,
    }


def round_(viewer: Viewer, obj: Round, *, all_sites: set[str] | None = None) -> dict[str, Any]:
    """A round; ``all_sites`` (the participants' slugs) saves a query per round in lists."""
    if all_sites is None:
        all_sites = participant_slugs(obj.experiment)
    why = ending(viewer, obj.failure_code, obj.failure_reason, "")
    version = getattr(obj, "model_version", None)
    return {
        "id": obj.pk,
        "experiment": obj.experiment_id,
        "number": obj.number,
        "status": obj.status,
        "deadline": obj.deadline,
        "started_at": obj.started_at,
        "closed_at": obj.closed_at,
        "completed_at": obj.completed_at,
        "metrics": round_metrics(viewer, obj.metrics or {}, all_sites),
        "failure_reason": why["text"] if why else "",
        "failure_code": why["code"] if why else "",
        "model_version": version.pk if version else None,
        "secure": secure_phases(viewer, obj),
    }


def secure_phases(viewer: Viewer, obj: Round) -> dict[str, Any] | None:
    """A secure round's protocol phase with its deadline, and each site's place in it: every
    site's for the coordinator (with how many dropped), a site's own only for that site.
    None for a plain round (or one that failed closed before the protocol opened)."""
    try:
        secure = obj.secure
    except SecureRound.DoesNotExist:
        return None
    places = sorted(secure.sites.select_related("site"), key=lambda p: p.site.slug)
    out: dict[str, Any] = {
        "phase": secure.phase,
        "phase_deadline": secure.phase_deadline,
        "threshold": secure.threshold,
        "sites": [
            {"site": p.site.slug, "last_phase": p.last_phase, "status": p.status, "dropped_in": p.dropped_in}
            for p in places if viewer.sees_site(p.site_id)
        ],
    }
    if viewer.is_coordinator:
        out["dropped"] = sum(p.status == p.Status.DROPPED for p in places)
    return out


def update(viewer: Viewer, obj: ClientUpdate) -> dict[str, Any] | None:
    """A site's update: to its own site and the coordinator only (None to anyone else).
    The agent's own note goes to its own site only, never to the coordinator."""
    if not viewer.sees_site(obj.site_id):
        return None
    why = reason(viewer, obj.error_code, obj.error)
    return {
        "id": obj.pk,
        "experiment": obj.round.experiment_id,
        "round": obj.round_id,
        "round_number": obj.round.number,
        "site": obj.site.slug,
        "status": obj.status,
        "num_samples": obj.num_samples,
        "loss": obj.loss,
        "metrics": obj.metrics,
        "sha256": obj.sha256,
        "error": why["text"] if why else "",
        "error_code": why["code"] if why else "",
        "site_note": obj.site_note if viewer.owns(obj.site_id) else "",
        "attempts": obj.attempts,
        "source": obj.source,
        "created_at": obj.created_at,
        "started_at": obj.started_at,
        "received_at": obj.received_at,
    }


def version_metrics(viewer: Viewer, obj: ModelVersion, figures: VersionFigures) -> dict[str, Any]:
    """The coordinator follows the running mean; a site sees the final mean only.

    ``defined``: per metric, over how many of ``sites_reported`` its mean is (a metric
    that needs both classes is n/a at a single-class site). The coordinator also gets
    ``sites_expected``, so a point still being scored reads "2 of 3 sites".
    """
    if viewer.is_coordinator:
        stored = obj.metrics or {}
        return {
            "mean": stored.get("mean") or {},
            "sites_reported": stored.get("sites_reported", 0),
            "defined": stored.get("defined") or {},
            "sites_expected": figures.expected,
            "final": figures.final,
        }
    shown: dict[str, Any] = {"mean": figures.mean, "sites_reported": figures.sites, "final": figures.published}
    if figures.published:  # over how many sites each published mean is
        shown["defined"] = figures.defined
    return shown


def version(
    viewer: Viewer,
    obj: ModelVersion,
    figures: VersionFigures | None = None,
    privacy: dict[int, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """``figures`` and ``privacy`` (by version pk, ``version_privacy``) save queries in lists."""
    if figures is None:
        figures = version_figures([obj])[obj.pk]
    if privacy is None or obj.pk not in privacy:
        privacy = version_privacy(viewer, [obj])
    return {
        "id": obj.pk,
        "experiment": obj.experiment_id,
        "version": obj.version,
        "round": obj.round.number,
        "sha256": obj.sha256,
        "normalizer": obj.normalizer,
        "model_config": obj.model_config,
        "schema": obj.schema,
        "metrics": version_metrics(viewer, obj, figures),
        "privacy": privacy[obj.pk],
        "created_at": obj.created_at,
    }


def evaluation(viewer: Viewer, obj: SiteEvaluation) -> dict[str, Any] | None:
    if not viewer.sees_site(obj.site_id):
        return None
    return {"version": obj.version.version, "site": obj.site.slug, "metrics": obj.metrics}


# Written when the last site evaluates a version: a site would learn from the line's
# appearance when another site reported (its own evaluations and the published mean
# are in the export's other parts).
_COORDINATOR_ONLY_EVENTS = ("evaluated",)


def log_event(
    viewer: Viewer, event: dict[str, Any], figures: dict[int, VersionFigures], all_sites: set[str]
) -> dict[str, Any] | None:
    """A log line as ``viewer`` may see it (None: not at all). ``figures``: by version number."""
    if viewer.is_coordinator:
        return dict(event)
    if event.get("event") in _COORDINATOR_ONLY_EVENTS:
        return None
    own = viewer.site_slug
    out = {k: event[k] for k in _PLAIN_LOG_FIELDS if k in event}
    if isinstance(event.get("sites"), list):
        out["sites"] = [s for s in event["sites"] if s == own]
    if event.get("event") == "round_completed":
        out.update(round_metrics(viewer, event, all_sites))
    if isinstance(event.get("per_site"), dict):
        out["per_site"] = {k: v for k, v in event["per_site"].items() if k == own}
    if "mean" in event:
        shown = figures.get(event.get("version") or event.get("round"))
        out["mean"] = shown.mean if shown is not None and shown.published else {}
    if "reason" in event or "code" in event:
        why = ending(
            viewer, event.get("code") or "", event.get("reason") or "", event.get("event") or ""
        )
        out["reason"] = why["text"] if why else ""
    return out


def metrics_history(viewer: Viewer, obj: Experiment, evaluations) -> dict[str, Any]:
    """Per round: its figures and its version's mean, as ``viewer`` may see them.
    ``evaluations``: the viewer's scoped evaluations of this experiment."""
    versions = {
        v.round_id: v for v in ModelVersion.objects.filter(experiment=obj).select_related("round")
    }
    figures = version_figures(versions.values())
    per_site: dict[int, dict[str, dict]] = {}
    for e in evaluations:
        shown = evaluation(viewer, e)
        if shown is not None:
            per_site.setdefault(e.version_id, {})[shown["site"]] = shown["metrics"]
    all_sites = participant_slugs(obj)
    rounds = []
    for r in obj.rounds.order_by("number"):
        v = versions.get(r.pk)
        metrics = round_metrics(viewer, r.metrics or {}, all_sites)
        shown = version_metrics(viewer, v, figures[v.pk]) if v else {}
        rounds.append(
            {
                "round": r.number,
                "status": r.status,
                "train_loss": metrics.get("train_loss"),
                "num_samples": metrics.get("num_samples"),
                "accepted": metrics.get("accepted", []),
                "rejected": metrics.get("rejected", []),
                "model": v.pk if v else None,
                "version": v.version if v else None,
                "sites_reported": shown.get("sites_reported", 0),
                "final": shown.get("final", False),
                "mean": shown.get("mean", {}),
                "defined": shown.get("defined", {}),
                "per_site": per_site.get(v.pk, {}) if v else {},
            }
        )
    return {"experiment": obj.pk, "status": obj.status, "rounds": rounds}
