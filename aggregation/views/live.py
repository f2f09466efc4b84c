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

from .. import policy
from ..models import Experiment, Round
from ..permissions import visible_experiments, visible_versions
from ..services import health
from . import charts
from .privacy_chart import privacy_figure
from .progress import (
    experiment_progress,
    participant_sites,
    round_grid,
    round_table_context,
    secure_table,
    site_figures,
)
from .quality import experiment_quality, partial_points

# After the last round the sites still evaluate the final model; keep polling for
# their figures, but not forever if a site never answers.
EVALUATION_GRACE = timedelta(minutes=10)


def live_payload(request, experiment: Experiment) -> dict:
    user = request.user
    viewer = policy.viewer_of(user)
    progress = experiment_progress(experiment, viewer)
    versions = list(visible_versions(user).filter(experiment=experiment).order_by("version"))
    figures = policy.version_figures(versions)
    means = [(v.version, policy.version_metrics(viewer, v, figures[v.pk])) for v in versions]
    quality = experiment_quality(experiment, user, means)
    all_sites = policy.participant_slugs(experiment)
    train_loss = {
        r.number: policy.round_metrics(viewer, r.metrics or {}, all_sites).get("train_loss")
        for r in experiment.rounds.filter(status=Round.Status.COMPLETED)
    }
    sites = site_figures(experiment, user)
    # Each site's epsilon per round: the coordinator every site's, a site its own.
    privacy = policy.privacy_rounds(viewer, experiment) if experiment.dp_mode != "off" else []
    numbers, grid = round_grid(experiment, user)
    fragment = {"experiment": experiment, "progress": progress, "user_is_coordinator": viewer.is_coordinator,
                # "No worker has taken X's work": about the viewer's own visible sites only.
                "worker_notices": health.worker_notices([experiment], participant_sites(experiment, user))}
    html = {
        # A finished model worse than chance is not shown as a green "Completed" alone.
        "status": render_to_string("aggregation/_status_badge.html", {"status": experiment.status,
                                                                      "label": experiment.get_status_display(),
                                                                      "warn": bool(quality.warnings)}),
        "quality": render_to_string("aggregation/_quality.html", {"quality": quality}),
        "progress": render_to_string("aggregation/_progress.html", fragment),
        "actions": render_to_string("aggregation/_actions.html", fragment, request=request),
        "rounds": render_to_string("aggregation/_round_table.html", {
            **round_table_context(numbers, grid, viewer), "secure": secure_table(experiment, viewer)}),
        "sites": render_to_string("aggregation/_site_metrics.html", {"sites": sites}),
    }
    return charts.clean({
        "progress": progress.to_dict(),
        "figures": {
            "global": charts.global_figures(
                experiment.num_rounds, [(n, m["mean"]) for n, m in means], train_loss,
                partial=partial_points(means), prevalence=quality.prevalence,
            ),
            "sites": charts.site_comparison_figures([(s.site.name, s.local, s.global_) for s in sites]),
            "privacy": {"epsilon": privacy_figure(experiment.num_rounds, privacy)},
        },
        "privacy": privacy,
        "html": html,
        "done": _done(experiment, progress.finished, figures.values(), viewer),
    })


def _done(experiment: Experiment, finished: bool, figures, viewer: policy.Viewer) -> bool:
    """Polling can stop once the experiment ended and no figure the viewer may see will
    change again (for a site: every version's mean published, so the flag itself never
    tells when another site reported), or after a grace period."""
    if not finished:
        return False
    if experiment.finished_at and timezone.now() - experiment.finished_at > EVALUATION_GRACE:
        return True
    return all(f.final if viewer.is_coordinator else f.published for f in figures)


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
