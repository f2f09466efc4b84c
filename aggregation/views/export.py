"""Downloads of an experiment's log and metrics, scoped like every other page."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.text import slugify

from .. import policy
from ..permissions import visible_experiments
from ..services import exports

FORMATS = {
    # (content type, the file name's ending): "name-1.json", "name-1-metrics.csv"
    "json": ("application/json", ".json"),
    "metrics.csv": ("text/csv; charset=utf-8", "-metrics.csv"),
    "log.csv": ("text/csv; charset=utf-8", "-log.csv"),
}


@login_required
def experiment_export(request, pk: int, fmt: str):
    experiment = get_object_or_404(visible_experiments(request.user), pk=pk)
    data = exports.build_export(experiment, policy.viewer_of(request.user))
    if fmt == "json":
        body = json.dumps(data, indent=2)
    elif fmt == "metrics.csv":
        body = exports.metrics_csv(data)
    else:
        body = exports.log_csv(data)
    content_type, suffix = FORMATS[fmt]
    response = HttpResponse(body, content_type=content_type)
    name = f"{slugify(experiment.name) or 'experiment'}-{experiment.pk}{suffix}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
