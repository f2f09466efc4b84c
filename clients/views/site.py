"""A site's own pages: its home, its datasets, and the download of its own files."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse
from django.shortcuts import get_object_or_404, render

from aggregation import policy
from aggregation.figure_words import class_words, worse_than_chance
from aggregation.models import Experiment
from aggregation.permissions import visible_experiments, visible_updates
from aggregation.services import privacy
from aggregation.views.comparison import comparison_context
from aggregation.views.progress import experiment_progress, site_figures
from audit import services as audit
from clients.forms import UploadForm
from clients.models import Dataset
from clients.permissions import downloadable_datasets, is_site_admin, site_of, visible_datasets
from clients.policy import dataset_summary
from fedhealth.ml.schema import DEFAULT_SCHEMA

from .access import site_member_required
from .upload import describe_report

RECENT_UPDATES = 30


@site_member_required
def site_home(request):
    user = request.user
    datasets = list(visible_datasets(user).order_by("-created_at"))
    latest_ready = next((d for d in datasets if d.status == Dataset.Status.READY), None)
    for d in datasets:  # the site's own ledger: spent over every experiment, and its budget
        d.privacy = privacy.budget_status(d) if d.status == Dataset.Status.READY else None
    viewer = policy.viewer_of(user)
    experiments = []
    for experiment in visible_experiments(user).order_by("-created_at"):
        figures = site_figures(experiment, user)
        mine = figures[0] if figures else None
        finished = experiment.status == Experiment.Status.COMPLETED
        experiments.append({
            "experiment": experiment,
            "progress": experiment_progress(experiment, viewer),
            "mine": mine,
            "positive": class_words(experiment.schema_obj)["positive"],
            # A finished model worse than chance on this site's test rows is said, not hidden.
            "below_chance": worse_than_chance(mine.global_) if finished and mine and mine.global_ else [],
            "active": experiment.status in Experiment.ACTIVE,
            # Alone / global / personalised at this site, once the experiment completed.
            "cmp": (cmp := comparison_context(viewer, experiment)),
            "worse_than_alone": bool(cmp and cmp["warning"]),
        })
    updates = list(visible_updates(user).select_related("round__experiment").order_by("-created_at")[:RECENT_UPDATES])
    for u in updates:  # the reason and the agent's own note, as the policy shows them
        u.shown = policy.update(viewer, u)
    return render(request, "clients/site_home.html", {
        "site": request.site,
        "datasets": datasets,
        "latest_ready": latest_ready,
        "shown": dataset_summary(user, latest_ready) if latest_ready else None,
        "experiments": experiments,
        "updates": updates,
        "upload_form": UploadForm(),
        "schema": DEFAULT_SCHEMA,
        "poll_ms": settings.FEDHEALTH_POLL_MS,
        "site_admin": is_site_admin(user),
    })


@login_required
def dataset_detail(request, pk: int):
    dataset = get_object_or_404(visible_datasets(request.user), pk=pk)
    # The validation report quotes cell values from the file: the owning site's only.
    own = site_of(request.user) == dataset.site
    return render(request, "clients/dataset_detail.html", {
        "dataset": dataset,
        "shown": dataset_summary(request.user, dataset),
        "min_rows": settings.FEDHEALTH_MIN_DATASET_ROWS,
        "own": own,
        "can_download": own and bool(dataset.file),
        "can_delete": own and is_site_admin(request.user) and dataset.status != Dataset.Status.DELETED,
        "report": describe_report(dataset.validation_report if own else _counts_only(dataset.validation_report)),
    })


@login_required
def dataset_download(request, pk: int):
    dataset = get_object_or_404(downloadable_datasets(request.user), pk=pk)
    filename = dataset.name if dataset.name.lower().endswith(".csv") else f"{dataset.name}.csv"
    audit.record(audit.Kind.DATASET_DOWNLOAD, site=dataset.site, target=f"dataset {dataset.pk}", details={"name": dataset.name})
    return FileResponse(dataset.file.open("rb"), as_attachment=True, filename=filename, content_type="text/csv")


def _counts_only(report: dict) -> dict:
    return {k: val for k, val in report.items() if k not in ("problems", "warnings")}
