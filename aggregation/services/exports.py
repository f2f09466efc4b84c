"""An experiment's log and metrics as JSON and CSV, scoped to what the reader may see.

A coordinator's export holds every site's figures; a site member's holds the global
model's figures plus their own site's, and the log is scrubbed of other sites' names
and metrics (a site must not learn who else takes part from an export). Figures only:
no export ever holds a row of data.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from fedhealth.ml.metrics import METRIC_KEYS

from ..models import ClientUpdate, Experiment, ModelVersion, Round, SiteEvaluation
from . import artifacts

METRIC_COLUMNS = ["loss", *METRIC_KEYS]
# Log fields that name sites: lists of slugs, lists of {"site": slug, ...}, {slug: ...}.
_SLUG_LISTS = ("sites", "accepted")
_SITE_DICT_LISTS = ("rejected",)
_SITE_MAPS = ("per_site",)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def scrub_event(event: dict[str, Any], site_slug: str) -> dict[str, Any]:
    """The log event as a member of ``site_slug`` may see it: other sites removed."""
    out = dict(event)
    for key in _SLUG_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [s for s in out[key] if s == site_slug]
    for key in _SITE_DICT_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [r for r in out[key] if isinstance(r, dict) and r.get("site") == site_slug]
    for key in _SITE_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k == site_slug}
    return out


def visible_log(experiment: Experiment, site_slug: str | None) -> list[dict[str, Any]]:
    """The experiment's log; ``site_slug`` None means unscoped (a coordinator)."""
    events = artifacts.read_log(experiment)
    return events if site_slug is None else [scrub_event(e, site_slug) for e in events]


def build_export(experiment: Experiment, site_ids: list[int] | None, site_slug: str | None) -> dict[str, Any]:
    """Everything the reader may see of an experiment, JSON-ready.

    ``site_ids``: the sites whose own figures the reader may see (None: all sites);
    ``site_slug``: the reader's site for scrubbing the log (None: no scrubbing).
    """
    rounds = list(experiment.rounds.order_by("number"))
    versions = {v.version: v for v in ModelVersion.objects.filter(experiment=experiment)}
    updates = ClientUpdate.objects.filter(round__experiment=experiment).select_related("site", "round")
    evaluations = SiteEvaluation.objects.filter(version__experiment=experiment).select_related("site", "version")
    if site_ids is not None:
        updates = updates.filter(site_id__in=site_ids)
        evaluations = evaluations.filter(site_id__in=site_ids)
    data = {
        "experiment": {
            "id": experiment.pk, "name": experiment.name, "status": experiment.status,
            "failure_reason": experiment.failure_reason,
            "created_at": experiment.created_at, "started_at": experiment.started_at,
            "finished_at": experiment.finished_at, "config": experiment.federated_config().to_dict(),
            "min_sites": experiment.min_sites, "fraction_fit": experiment.fraction_fit,
            "round_timeout_seconds": experiment.round_timeout, "test_fraction": experiment.test_fraction,
            "schema": experiment.schema,
        },
        "rounds": [_round(r, versions.get(r.number), scoped=site_ids is not None) for r in rounds],
        "site_updates": [
            {"round": u.round.number, "site": u.site.slug, "status": u.status, "num_samples": u.num_samples,
             "loss": u.loss, "metrics": u.metrics, "error": u.error, "received_at": u.received_at}
            for u in updates.order_by("round__number", "site__slug")
        ],
        "site_evaluations": [
            {"version": e.version.version, "site": e.site.slug, "metrics": e.metrics}
            for e in evaluations.order_by("version__version", "site__slug")
        ],
        "log": visible_log(experiment, site_slug),
    }
    return _json_safe(json.loads(json.dumps(data, default=str)))


def _round(r: Round, version: ModelVersion | None, *, scoped: bool) -> dict[str, Any]:
    metrics = dict(r.metrics)
    if scoped:  # which sites were accepted or rejected is the coordinator's business
        metrics.pop("accepted", None)
        metrics.pop("rejected", None)
    return {
        "round": r.number, "status": r.status, "started_at": r.started_at, "completed_at": r.completed_at,
        "failure_reason": r.failure_reason, "metrics": metrics,
        "version": version.version if version else None, "sha256": version.sha256 if version else None,
        "global_metrics": (version.metrics.get("mean") if version else None) or {},
    }


def metrics_csv(export: dict[str, Any]) -> str:
    """One row per round and source: the global model's mean over the sites, and each
    visible site's local model and the global model on that site's test data."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["round", "source", "site", "status", "num_samples", "train_loss", *METRIC_COLUMNS])
    for r in export["rounds"]:
        writer.writerow([r["round"], "global model (mean over sites)", "", r["status"],
                         r["metrics"].get("num_samples"), r["metrics"].get("train_loss"),
                         *(r["global_metrics"].get(k) for k in METRIC_COLUMNS)])
    for u in export["site_updates"]:
        writer.writerow([u["round"], "local model at site", u["site"], u["status"], u["num_samples"], u["loss"],
                         *(u["metrics"].get(k) for k in METRIC_COLUMNS)])
    for e in export["site_evaluations"]:
        writer.writerow([e["version"], "global model at site", e["site"], "", "", "",
                         *(e["metrics"].get(k) for k in METRIC_COLUMNS)])
    return out.getvalue()


def log_csv(export: dict[str, Any]) -> str:
    """The log, one event per row; fields beyond time, event and round as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["at", "event", "round", "details"])
    for event in export["log"]:
        rest = {k: v for k, v in event.items() if k not in ("at", "event", "round")}
        writer.writerow([event.get("at", ""), event.get("event", ""), event.get("round", ""),
                         json.dumps(rest, sort_keys=True)])
    return out.getvalue()


__all__ = ["build_export", "log_csv", "metrics_csv", "scrub_event", "visible_log"]
