"""A site admin sets a dataset's lifetime privacy budget (its own site's datasets only)."""

from __future__ import annotations

import math

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from aggregation.services import privacy
from clients.models import Dataset
from clients.permissions import is_site_admin

from .access import site_member_required

BUDGET_MAX = 100.0  # the creation service's largest epsilon per experiment


@require_POST
@site_member_required
def dataset_privacy_budget(request, pk: int):
    # Looked up within the user's own site first: another site's dataset is a 404.
    dataset = get_object_or_404(Dataset, pk=pk, site=request.site)
    if not is_site_admin(request.user):
        raise PermissionDenied("Only a site admin sets a dataset's privacy budget.")
    raw = request.POST.get("epsilon", "").strip()
    if not raw:
        privacy.set_budget(dataset, None, request.user)
        messages.success(request, f"{dataset.name}: no privacy budget; every spend is still recorded.")
        return redirect("site_home")
    try:
        epsilon = float(raw)
    except ValueError:
        epsilon = math.nan
    if not (math.isfinite(epsilon) and 0 <= epsilon <= BUDGET_MAX):
        messages.error(request, f"The privacy budget must be a number from 0 to {BUDGET_MAX:g}, not {raw[:40]!r}.")
        return redirect("site_home")
    privacy.set_budget(dataset, epsilon, request.user)
    messages.success(request, f"{dataset.name}: privacy budget set to epsilon {epsilon:g}.")
    return redirect("site_home")
