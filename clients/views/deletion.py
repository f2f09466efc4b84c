"""A site admin deletes one of the site's datasets (clients/deletion.py decides)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from clients.deletion import DatasetDeletionRefused, delete_dataset
from clients.models import Dataset
from clients.permissions import is_site_admin

from .access import site_member_required


@require_POST
@site_member_required
def dataset_delete(request, pk: int):
    # Looked up within the user's own site first: another site's dataset is a 404.
    dataset = get_object_or_404(Dataset, pk=pk, site=request.site)
    if not is_site_admin(request.user):
        raise PermissionDenied("Only a site admin deletes a dataset.")
    try:
        delete_dataset(dataset, by=request.user)
    except DatasetDeletionRefused as exc:
        messages.error(request, exc.message)
        return redirect("dataset_detail", pk=dataset.pk)
    messages.success(
        request,
        f"“{dataset.name}” was deleted: its file is gone from storage; its summary and the "
        "deletion record stay.",
    )
    return redirect("dataset_detail", pk=dataset.pk)
