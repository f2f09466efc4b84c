"""A site admin's decisions on the experiments their site is invited to (and on its
datasets' withdrawal). Each lookup goes through ``consent.invitations(user)`` or the
user's own site, so another site's invitation or dataset is simply not found (404)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from clients.models import Dataset
from clients.permissions import is_site_admin

from ..services import consent


def _participant(request, pk: int):
    if not is_site_admin(request.user):
        raise PermissionDenied("Only a site admin decides on experiments for the site.")
    p = consent.invitations(request.user).filter(experiment_id=pk).first()
    if p is None:
        raise Http404("No such invitation.")
    return p


def _decide(request, pk: int, action, done: str):
    p = _participant(request, pk)
    try:
        action(p)
    except consent.ConsentError as exc:
        messages.error(request, f"“{p.experiment.name}”: {exc}")
    else:
        messages.success(request, f"“{p.experiment.name}”: {done}")
    return redirect("site_home")


@login_required
@require_POST
def consent_accept(request, pk: int):
    dataset = request.POST.get("dataset", "")
    if not dataset.isdigit():
        p = _participant(request, pk)
        messages.error(
            request, f"“{p.experiment.name}”: choose one of your ready datasets to accept with."
        )
        return redirect("site_home")
    return _decide(
        request,
        pk,
        lambda p: consent.accept(p.pk, request.user, int(dataset)),
        "accepted. Your site trains on the dataset you chose, from the next round it is asked.",
    )


@login_required
@require_POST
def consent_decline(request, pk: int):
    reason = request.POST.get("reason", "")
    return _decide(
        request,
        pk,
        lambda p: consent.decline(p.pk, request.user, reason),
        "declined. Your site will not be trained on.",
    )


@login_required
@require_POST
def consent_withdraw(request, pk: int):
    return _decide(
        request,
        pk,
        lambda p: consent.withdraw(p.pk, request.user),
        "withdrawn. Your site is not asked again from the next round.",
    )


@login_required
@require_POST
def dataset_withdraw(request, pk: int):
    if not is_site_admin(request.user):
        raise PermissionDenied("Only a site admin may withdraw a dataset.")
    try:
        dataset = consent.withdraw_dataset(pk, request.user)
    except Dataset.DoesNotExist:
        raise Http404("No such dataset.") from None
    messages.success(
        request,
        f"Dataset “{dataset.name}” withdrawn: it joins no new experiment, and running experiments "
        "stop using it from their next round.",
    )
    return redirect("site_home")
