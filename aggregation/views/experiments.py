"""Experiment pages: list, live detail, create/configure, and the lifecycle buttons."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from clients.permissions import visible_datasets
from clients.views.access import coordinator_required

from .. import dispatch, policy, services
from ..forms import FEW_SITES, FEW_SITES_NOTICE, ExperimentForm, strategy_label
from ..models import Experiment
from ..permissions import visible_experiments
from ..services.consent import STATE_TEXT
from .comparison import comparison_context, finish_text
from .live import live_context
from .progress import experiment_progress

ACTIONS = {
    "start": (services.start_experiment, "started: round 1 is open"),
    "pause": (services.pause_experiment, "paused: the round in flight finishes, no new one opens"),
    "resume": (services.resume_experiment, "resumed"),
    "cancel": (services.cancel_experiment, "cancelled"),
}


@login_required
def experiment_list(request):
    experiments = visible_experiments(request.user).order_by("-created_at")
    viewer = policy.viewer_of(request.user)
    rows = [(e, experiment_progress(e, viewer)) for e in experiments]
    return render(request, "aggregation/experiment_list.html", {"rows": rows})


@login_required
def experiment_detail(request, pk: int):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    viewer = policy.viewer_of(request.user)
    coordinator = viewer.is_coordinator
    participants = [
        p for p in experiment.participants.select_related("site", "dataset").order_by("site__name")
        if viewer.sees_site(p.site_id)
    ]
    # Each row's consent as the policy shows it to this viewer (a site: its own only).
    shown = {row["site"]: row for row in policy.participants(viewer, experiment)}
    for p in participants:
        p.consent_shown = shown.get(p.site.slug)
        p.consent_text = STATE_TEXT.get(p.consent_shown["consent"], "") if p.consent_shown else ""
    context = {
        "experiment": experiment,
        "participants": participants,
        "num_sites": (num_sites := policy.experiment(viewer, experiment)["num_sites"]),
        "few_sites": num_sites is not None and 0 < num_sites < FEW_SITES,
        "few_sites_notice": FEW_SITES_NOTICE,
        "min_figure_sites": policy.min_sites(),
        "strategy_name": strategy_label(experiment.strategy),
        "problems": services.check_ready(experiment) if coordinator and experiment.status == "draft" else [],
        "user_is_coordinator": coordinator,
        # Balanced accuracy and AUROC lead; accuracy and loss follow (issue 10).
        "chart_titles": [("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"),
                         ("accuracy", "accuracy"), ("loss", "loss")],
        "privacy_guarantee": policy.guarantee(experiment),
        # Alone / global / personalised: a site its own, the coordinator aggregates only.
        "cmp": comparison_context(viewer, experiment),
        "finish_text": finish_text(experiment),
        # "0.000001", not Python's "1e-06".
        "plain_numbers": {name: _plain(getattr(experiment, name)) for name in ("lr", "weight_decay")},
        **live_context(request, experiment),
    }
    return render(request, "aggregation/experiment_detail.html", context)


def _plain(value: float) -> str:
    return f"{value:.12f}".rstrip("0").rstrip(".") if value else "0"


@coordinator_required
def experiment_create(request):
    form = ExperimentForm(request.POST or None, datasets=visible_datasets(request.user))
    if request.method == "POST" and form.is_valid() and (experiment := form.save(user=request.user)):
        messages.success(request, f"Experiment “{experiment.name}” saved as a draft. Start it when ready.")
        _warn_if_few_sites(request, experiment)
        return redirect("experiment_detail", pk=experiment.pk)
    return render(request, "aggregation/experiment_form.html", {"form": form})


@coordinator_required
def experiment_edit(request, pk: int):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    if experiment.status != Experiment.Status.DRAFT:
        messages.error(request, "Only a draft experiment can be changed.")
        return redirect("experiment_detail", pk=pk)
    form = ExperimentForm(request.POST or None, instance=experiment, datasets=visible_datasets(request.user))
    if request.method == "POST" and form.is_valid() and form.save(user=request.user):
        messages.success(request, "Changes saved.")
        _warn_if_few_sites(request, experiment)
        return redirect("experiment_detail", pk=pk)
    return render(request, "aggregation/experiment_form.html", {"form": form, "experiment": experiment})


def _warn_if_few_sites(request, experiment: Experiment) -> None:
    if 0 < experiment.participants.count() < FEW_SITES:
        messages.warning(request, FEW_SITES_NOTICE)


@coordinator_required
@require_POST
def experiment_action(request, pk: int, action: str):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    run, done = ACTIONS[action]
    try:
        # The change commits even when the broker is unreachable; the report says
        # whether the work it queues (on commit) actually reached the broker.
        with dispatch.report() as sent:
            run(experiment.pk)
    except services.TransitionError as exc:
        messages.error(request, f"Could not {action} the experiment: {exc}")
    else:
        # Tagged with the status it announces: the live page removes it once the
        # experiment has moved on (a "started" line above a Failed badge misleads).
        announces = f"announces:{Experiment.objects.get(pk=experiment.pk).status}"
        if sent.notice:
            messages.warning(request, f"Experiment {done}. {sent.notice}", extra_tags=announces)
        else:
            messages.success(request, f"Experiment {done}.", extra_tags=announces)
    return redirect("experiment_detail", pk=pk)
