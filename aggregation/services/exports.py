"""An experiment's log and metrics as JSON and CSV, as the reader may see them.

Every part is built with the viewer-aware representations of ``aggregation.policy``,
the same ones the API, the pages and live.json use: a coordinator's export holds every
site's figures; a site's holds its own figures and the final aggregates the policy
allows, and no other site's name, status or reason. Figures only: no export ever holds
a row of data.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from fedhealth import csvsafe
from fedhealth.ml.metrics import METRIC_KEYS

from .. import policy
from ..figure_words import LEAD_METRICS, NA, class_words, mean_note
from ..models import ClientUpdate, Experiment, ModelVersion, Round, SiteEvaluation
from . import artifacts

# Balanced accuracy and AUROC lead (issue 10); every other metric follows.
METRIC_COLUMNS = [*LEAD_METRICS, *(k for k in ("loss", *METRIC_KEYS) if k not in LEAD_METRICS)]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def visible_log(experiment: Experiment, viewer: policy.Viewer) -> list[dict[str, Any]]:
    versions = list(ModelVersion.objects.filter(experiment=experiment))
    by_pk = policy.version_figures(versions)
    figures = {v.version: by_pk[v.pk] for v in versions}
    all_sites = policy.participant_slugs(experiment)
    shown = (policy.log_event(viewer, e, figures, all_sites) for e in artifacts.read_log(experiment))
    return [e for e in shown if e is not None]


def build_export(experiment: Experiment, viewer: policy.Viewer) -> dict[str, Any]:
    """Everything ``viewer`` may see of an experiment, JSON-ready."""
    rounds = list(experiment.rounds.select_related("model_version").order_by("number"))
    versions = {v.round_id: v for v in ModelVersion.objects.filter(experiment=experiment).select_related("round")}
    figures = policy.version_figures(versions.values())
    all_sites = policy.participant_slugs(experiment)
    updates = ClientUpdate.objects.filter(round__experiment=experiment).select_related("site", "round")
    evaluations = SiteEvaluation.objects.filter(version__experiment=experiment).select_related("site", "version")
    if not viewer.is_coordinator:
        updates = updates.filter(site_id=viewer.site_id)
        evaluations = evaluations.filter(site_id=viewer.site_id)
    shown = policy.experiment(viewer, experiment)
    data = {
        "experiment": {
            "id": experiment.pk, "name": experiment.name, "status": experiment.status,
            "failure_reason": shown["failure_reason"], "failure_code": shown["failure_code"],
            "num_sites": shown["num_sites"], "participants": shown["participants"],
            "created_at": experiment.created_at, "started_at": experiment.started_at,
            "finished_at": experiment.finished_at, "config": experiment.federated_config().to_dict(),
            "min_sites": experiment.min_sites, "fraction_fit": experiment.fraction_fit,
            "round_timeout_seconds": experiment.round_timeout, "test_fraction": experiment.test_fraction,
            "schema": experiment.schema,
            # What sensitivity, precision, F1, ROC and confusion counts refer to.
            "positive_class": class_words(experiment.schema_obj)["statement"],
        },
        "rounds": [_round(viewer, r, versions.get(r.pk), figures, all_sites) for r in rounds],
        "site_updates": [
            _update(policy.update(viewer, u)) for u in updates.order_by("round__number", "site__slug")
        ],
        "site_evaluations": [
            policy.evaluation(viewer, e) for e in evaluations.order_by("version__version", "site__slug")
        ],
        "log": visible_log(experiment, viewer),
    }
    return _json_safe(json.loads(json.dumps(data, default=str)))


def _update(shown: dict[str, Any]) -> dict[str, Any]:
    keep = ("site", "status", "num_samples", "loss", "metrics", "error", "error_code", "site_note", "received_at")
    return {"round": shown["round_number"], **{k: shown[k] for k in keep}}


def _round(viewer: policy.Viewer, r: Round, version: ModelVersion | None, figures, all_sites) -> dict[str, Any]:
    shown = policy.round_(viewer, r, all_sites=all_sites)
    mean = policy.version_metrics(viewer, version, figures[version.pk]) if version else {}
    return {
        "round": r.number, "status": r.status, "started_at": r.started_at, "completed_at": r.completed_at,
        "failure_reason": shown["failure_reason"], "failure_code": shown["failure_code"],
        "metrics": shown["metrics"],
        "version": version.version if version else None, "sha256": version.sha256 if version else None,
        "global_metrics": mean.get("mean") or {}, "global_final": bool(mean.get("final")),
        # Per metric, over how many sites its mean is (null where no site defines it).
        "global_defined": mean.get("defined") or {},
        "global_sites": mean.get("sites_reported", 0),
    }


def _cells(metrics: dict[str, Any]) -> list[Any]:
    """A row's metric cells: "n/a" where the figures exist but the metric is undefined
    (a site with one class has no AUROC), empty where there are no figures yet."""
    if not metrics:
        return ["" for _ in METRIC_COLUMNS]
    return [NA if metrics.get(k) is None else metrics[k] for k in METRIC_COLUMNS]


def _round_note(r: dict[str, Any]) -> str:
    if not r["global_metrics"]:
        return ""
    if not r["global_final"]:
        return f"partial: {r['global_sites']} sites so far, still being scored"
    notes = [f"{k} {mean_note(k, r['global_defined'].get(k), r['global_sites'])}" for k in LEAD_METRICS
             if mean_note(k, r["global_defined"].get(k), r["global_sites"])]
    return "; ".join(notes)


def metrics_csv(export: dict[str, Any]) -> str:
    """One row per round and source: the global model's mean over the sites, and each
    visible site's local model and the global model on that site's test data."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # formula cells neutralised
    writer.writerow(["round", "source", "site", "status", "num_samples", "train_loss", *METRIC_COLUMNS, "note"])
    for r in export["rounds"]:
        writer.writerow([r["round"], "global model (mean over sites)", "", r["status"],
                         r["metrics"].get("num_samples"), r["metrics"].get("train_loss"),
                         *_cells(r["global_metrics"]), _round_note(r)])
    for u in export["site_updates"]:
        writer.writerow([u["round"], "local model at site", u["site"], u["status"], u["num_samples"], u["loss"],
                         *_cells(u["metrics"]), ""])
    for e in export["site_evaluations"]:
        writer.writerow([e["version"], "global model at site", e["site"], "", "", "",
                         *_cells(e["metrics"]), ""])
    return out.getvalue()


def log_csv(export: dict[str, Any]) -> str:
    """The log, one event per row; the fields beyond time, event and round as readable
    ``name: value`` text (nested figures as ``mean accuracy 0.912``), not raw JSON."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # formula cells neutralised
    writer.writerow(["at", "event", "round", "details"])
    for event in export["log"]:
        rest = {k: v for k, v in event.items() if k not in ("at", "event", "round")}
        writer.writerow([event.get("at", ""), event.get("event", ""), event.get("round", ""), readable(rest)])
    return out.getvalue()


def readable(value: Any, depth: int = 0) -> str:
    """A log event's details as one line a person reads: ``key: value; ...`` at the top,
    nested mappings as ``key (inner: value, ...)``, floats to 4 decimals, empty values
    left out."""
    if isinstance(value, dict):
        parts = []
        for key in sorted(value):
            inner = value[key]
            if inner is None or inner == "" or inner == {} or inner == []:
                continue
            name = str(key).replace("_", " ")
            shown = readable(inner, depth + 1)
            parts.append(f"{name} ({shown})" if isinstance(inner, dict) else f"{name}: {shown}")
        return ("; " if depth == 0 else ", ").join(parts)
    if isinstance(value, list | tuple):
        return (", " if depth <= 1 else "/").join(readable(v, depth + 1) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else "n/a"
    return str(value)


__all__ = ["build_export", "log_csv", "metrics_csv", "readable", "visible_log"]
