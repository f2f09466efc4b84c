"""Model versions of an experiment: metrics, checksums, downloads and analytics."""

from __future__ import annotations

import hashlib
import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.text import slugify

from audit import services as audit
from fedhealth.files import read_bytes
from fedhealth.ml.model_file import model_card as model_card_of
from fedhealth.ml.model_file import with_description
from fedhealth.ml.schema import Schema
from fedhealth.ml.weights_io import read_metadata, sha256_hex, weights_from_bytes, weights_to_bytes

from .. import policy
from ..figure_words import class_words, mean_note
from ..models import ModelVersion
from ..permissions import visible_evaluations, visible_experiments, visible_versions
from ..services.recommend import recommended_version
from ..services.selection import describe_version
from . import charts
from .quality import partial_points, prevalence

# The versions table keeps to a few columns (it also shows the checksum); each site's
# figures on the selected version get the fuller set. Balanced accuracy and AUROC lead.
VERSION_METRICS = ["balanced_accuracy", "auroc", "accuracy", "f1", "brier", "loss"]
SITE_METRICS = ["balanced_accuracy", "auroc", "accuracy", "sensitivity", "specificity", "precision", "f1",
                "brier", "loss"]


@login_required
def model_list(request, pk: int):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    versions = list(
        visible_versions(request.user)
        .filter(experiment=experiment)
        .select_related("round")
        .order_by("-version")
    )
    selected = None
    if versions:
        wanted = request.GET.get("version")
        if wanted:
            selected = next((v for v in versions if str(v.version) == wanted), None)
            if selected is None:
                raise Http404("No such version")
        else:
            selected = versions[0]
    analytics = _analytics(request.user, selected) if selected else None
    viewer = policy.viewer_of(request.user)
    figures = policy.version_figures(versions)
    shown = {v.pk: policy.version_metrics(viewer, v, figures[v.pk]) for v in versions}
    privacy = policy.version_privacy(viewer, versions)
    context = {
        "experiment": experiment,
        "versions": versions,
        "rows": [
            (
                v,
                _cells(shown[v.pk], VERSION_METRICS),
                shown[v.pk],
                privacy[v.pk],
                policy.guarantee_text(privacy[v.pk]),
            )
            for v in versions
        ],
        "private": experiment.privacy_settings is not None,
        "selected": selected,
        "recommended": recommended_version(experiment, versions),
        "version_metrics": VERSION_METRICS,
        "site_metrics": SITE_METRICS,
        "analytics": analytics,
        "analytics_json": {"figures": analytics["figures"]} if analytics else None,
        "pooled": viewer.is_coordinator,
        "min_figure_sites": policy.min_sites(),
        "words": class_words(experiment.schema_obj),
        "partial": partial_points([(v.version, shown[v.pk]) for v in versions]),
        "prevalence": prevalence(experiment, viewer),
    }
    return render(request, "aggregation/model_list.html", context)


def _cells(shown: dict, names: list[str]) -> list[tuple[float | None, str]]:
    """(value, note) per metric of a version's mean: the note says "mean over 2 of 3
    sites" where the metric is undefined at some sites."""
    mean, defined, total = shown.get("mean") or {}, shown.get("defined") or {}, shown.get("sites_reported")
    return [(charts.num(mean.get(m)), mean_note(m, defined.get(m), total)) for m in names]


def _analytics(user, version: ModelVersion) -> dict | None:
    """ROC, calibration and confusion of one version on the visible sites' test data:
    every site's for a coordinator, the member's own site's otherwise."""
    evaluations = list(visible_evaluations(user).filter(version=version).order_by("site__name"))
    if not evaluations:
        return None
    named = [(e.site.name, e.curves or {}) for e in evaluations]
    confusion = {
        k: sum(int((c.get("confusion") or {}).get(k, 0)) for _, c in named)
        for k in ("tn", "fp", "fn", "tp")
    }
    schema = Schema.from_dict(version.schema)
    words = class_words(schema)
    return {
        "figures": charts.clean(
            {
                "roc": charts.roc_figure([(n, c.get("roc") or {}) for n, c in named],
                                         positive=words["positive"], negative=words["negative"]),
                "calibration": charts.calibration_figure(
                    [(n, c.get("calibration") or {}) for n, c in named]
                ),
                "confusion": charts.confusion_figure(confusion, schema.label, positive=words["positive"],
                                                     negative=words["negative"]),
            }
        ),
        "sites": [n for n, _ in named],
        "per_site": [
            (e.site.name, _values(e.metrics, SITE_METRICS), charts.num(e.metrics.get("n")))
            for e in evaluations
        ],
    }


def _values(metrics: dict, names: list[str]) -> list[float | None]:
    return [charts.num(metrics.get(m)) for m in names]


@login_required
def model_download(request, pk: int):
    version = get_object_or_404(visible_versions(request.user).select_related("experiment"), pk=pk)
    data = read_bytes(version.weights_file)
    if hashlib.sha256(data).hexdigest() != version.sha256:
        # Never hand out a file that is not the one recorded; the operator must look.
        return HttpResponse(
            "The stored model file does not match its checksum.",
            status=409,
            content_type="text/plain",
        )
    name = f"{slugify(version.experiment.name) or 'experiment'}-v{version.version}.safetensors"
    details = {"file": name}
    shown = policy.version_privacy(policy.viewer_of(request.user), [version])[version.pk]
    if shown is not None:
        data = with_guarantee(data, version.sha256, shown)
        details["guarantee"] = policy.guarantee_text(shown)
    # A file that travels: what load_model needs and the card says, as this viewer may see it.
    data = with_description(data, _description(request.user, version, shown) | {
        "fedhealth.stored_sha256": version.sha256,
    })
    audit.record(audit.Kind.MODEL_DOWNLOAD, target=f"model version {version.pk}", details=details)
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Checksum-SHA256"] = sha256_hex(data)
    response["X-Stored-SHA256"] = version.sha256
    return response


def _description(user, version: ModelVersion, privacy: dict | None) -> dict[str, str]:
    viewer = policy.viewer_of(user)
    figures = policy.version_figures([version])[version.pk]
    mean = policy.version_metrics(viewer, version, figures).get("mean") or None
    versions = list(visible_versions(user).filter(experiment_id=version.experiment_id))
    best = recommended_version(version.experiment, versions)
    return describe_version(version, metrics=mean, privacy=privacy, best=best == version if best else None)


@login_required
def model_card(request, pk: int):
    """The model card of a version (JSON): what its download describes itself as."""
    version = get_object_or_404(visible_versions(request.user).select_related("experiment"), pk=pk)
    privacy = policy.version_privacy(policy.viewer_of(request.user), [version])[version.pk]
    meta = _description(request.user, version, privacy)
    if privacy is not None:
        meta["fedhealth.privacy_guarantee"] = policy.guarantee_text(privacy)
    card = model_card_of(meta) | {"sha256_stored": version.sha256}
    name = f"{slugify(version.experiment.name) or 'experiment'}-v{version.version}.card.json"
    response = HttpResponse(json.dumps(card, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def with_guarantee(data: bytes, sha256: str, shown: dict) -> bytes:
    """The stored file with the viewer's guarantee in its safetensors header metadata
    (``fedhealth.privacy``: the figures as JSON; ``fedhealth.privacy_guarantee``: in
    words). The tensors are unchanged; the file's SHA-256 changes with the header, so the
    stored file's is kept in ``fedhealth.stored_sha256``."""
    meta = read_metadata(data) | {
        "fedhealth.privacy": json.dumps(shown, sort_keys=True),
        "fedhealth.privacy_guarantee": policy.guarantee_text(shown),
        "fedhealth.stored_sha256": sha256,
    }
    return weights_to_bytes(weights_from_bytes(data, expected_sha256=sha256), meta)
