"""The live experiment page's data: one JSON document the page polls.

It carries the Plotly figures and the server-rendered fragments (status, progress,
buttons, the per-site round table), so the page is complete on first load without
JavaScript and updates in place with it.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from clients.models import Site
from clients.permissions import is_coordinator

from ..models import Experiment, Round
from ..permissions import visible_experiments, visible_versions
from . import charts
from .progress import experiment_progress, round_grid, site_figures

# After the last round the sites still evaluate the final model; keep polling for
# their figures, but not forever if a site never answers.
EVALUATION_GRACE = timedelta(minutes=10)


def live_payload(request, experiment: Experiment) -> dict:
    user = request.user
    progress = experiment_progress(experiment)
    versions = list(
        visible_versions(user).filter(experiment=experiment).order_by("version").values_list("version", "metrics")
    )
    train_loss = {
        r.number: r.metrics.get("train_loss")
        for r in experiment.rounds.filter(status=Round.Status.COMPLETED)
    }
    sites = site_figures(experiment, user)
    numbers, grid = round_grid(experiment, user)
    fragment = {"experiment": experiment, "progress": progress, "user_is_coordinator": is_coordinator(user)}
    html = {
        "status": render_to_string("aggregation/_status_badge.html", {"status": experiment.status,
                                                                      "label": experiment.get_status_display()}),
        "progress": render_to_string("aggregation/_progress.html", fragment),
        "actions": render_to_string("aggregation/_actions.html", fragment, request=request),
        "rounds": render_to_string("aggregation/_round_table.html", {"numbers": numbers, "grid": grid}),
        "sites": render_to_string("aggregation/_site_metrics.html", {"sites": sites}),
    }
    return charts.clean({
        "progress": progress.to_dict(),
        "figures": {
            "global": charts.global_figures(
                experiment.num_rounds, [(n, m.get("mean") or {}) for n, m in versions], train_loss
            ),
            "sites": charts.site_comparison_figures([(s.site.name, s.local, s.global_) for s in sites]),
        },
        "html": html,
        "done": _done(experiment, progress.finished, [m for _, m in versions]),
    })


def _done(experiment: Experiment, finished: bool, version_metrics: list[dict]) -> bool:
    if not finished:
        return False
    if experiment.finished_at and timezone.now() - experiment.finished_at > EVALUATION_GRACE:
        return True
    evaluating = experiment.participants.filter(site__mode=Site.Mode.HOSTED, site__is_active=True).count()
    return all(m.get("sites_reported", 0) >= evaluating for m in version_metrics)


def live_context(request, experiment: Experiment) -> dict:
    """Template context for the first render of the live parts."""
    payload = live_payload(request, experiment)
    return {
        "live": payload,
        "live_config": {
            "url": reverse("experiment_live", args=[experiment.pk]),
            "poll_ms": settings.FEDHEALTH_POLL_MS,
            "done": payload["done"],
        },
    }


@login_required
def experiment_live(request, pk: int):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    response = JsonResponse(live_payload(request, experiment))
    response["Cache-Control"] = "no-store"
    return response
