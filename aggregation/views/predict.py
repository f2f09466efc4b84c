"""Predictions from a global model version: one patient by form, or a CSV of them."""

from __future__ import annotations

import csv
import io

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.defaultfilters import filesizeformat, pluralize

from clients.views.access import limit_upload_size
from fedhealth import csvsafe
from fedhealth.ml.inference import FieldError
from fedhealth.ml.schema import Schema

from .. import policy
from ..forms import PredictCsvForm, PredictForm, feature_label
from ..permissions import visible_versions
from ..services.predict import MAX_BATCH, personal_model, predict_records
from ..services.recommend import default_version

SHOWN_ROWS = 500  # a results table longer than this is offered as a download only


def _outcome(label_name: str, label: int) -> str:
    if label_name == "healthy":
        return "Healthy" if label else "Not healthy"
    return f"{label_name} = {label}"


def percent(p: float) -> str:
    """A probability as the page shows it, in the single result and the table alike;
    the ends say "<0.1%" / ">99.9%" rather than a misleading "0.0%" or "100.0%"."""
    if p < 0.0005:
        return "<0.1%"
    if p >= 0.9995:
        return ">99.9%"
    return f"{p:.1%}"


def _chosen_version(request, versions):
    """The version named in the request (404 if the user may not see it), else the
    recommended one (services.recommend): never a mid-run model while a finished
    experiment's is there."""
    raw = request.POST.get("version") or request.POST.get("csv-version") or request.GET.get("version")
    if raw:
        if not raw.isdigit():
            raise Http404("No such model version")
        return get_object_or_404(versions, pk=int(raw))
    return default_version(versions)


@login_required
@limit_upload_size("FEDHEALTH_MAX_PREDICT_BYTES")
def predict(request):
    versions = visible_versions(request.user).select_related("experiment", "round").order_by("-created_at", "-pk")
    version = _chosen_version(request, versions)
    if version is None:
        return render(request, "aggregation/predict.html", {"no_versions": True})
    schema = Schema.from_dict(version.schema)
    mode = request.POST.get("mode") if request.method == "POST" else None
    initial = {"version": version.pk}
    viewer = policy.viewer_of(request.user)
    form = PredictForm(request.POST if mode == "single" else None, versions=versions, schema=schema,
                       initial=initial, viewer=viewer)
    csv_form = PredictCsvForm(request.POST if mode == "csv" else None, request.FILES if mode == "csv" else None,
                              versions=versions, initial=initial, prefix="csv", viewer=viewer)
    # The site's own personalised model of this experiment, when it built one and asks.
    available = personal_model(viewer, version)
    personal = available if (request.POST.get("personal") or request.GET.get("personal")) == "1" else None
    context = {"form": form, "csv_form": csv_form, "version": version, "schema": schema,
               "max_batch": MAX_BATCH, "label_name": schema.label,
               "personal_available": available is not None, "personal": personal is not None}
    if mode == "single" and form.is_valid():
        record = {name: form.cleaned_data[name] for name in schema.feature_names}
        result = predict_records(version, [record], personal=personal)
        if result.ok:
            p = result.probabilities[0]
            context["single"] = {"probability": p, "percent": percent(p), "label": result.labels[0],
                                 "outcome": _outcome(schema.label, result.labels[0])}
        else:
            for err in result.errors:
                form.add_error(err.field if err.field in form.fields else None, err.message)
    elif mode == "csv":
        if getattr(request, "upload_too_large", False):
            csv_form.is_valid()
            csv_form.errors.pop("file", None)  # "required": the file was cut off, not missing
            csv_form.add_error("file", _too_large_message())
        elif csv_form.is_valid():
            return _predict_csv(request, version, schema, csv_form, context, personal)
    return render(request, "aggregation/predict.html", context)


def _too_large_message() -> str:
    return f"The file is larger than the {filesizeformat(settings.FEDHEALTH_MAX_PREDICT_BYTES)} limit for predictions."


def _read_records(upload) -> tuple[list[dict[str, str]], list[str]]:
    try:
        text = upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], ["The file is not UTF-8 text. Save it as “CSV UTF-8” and try again."]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return [], ["The file is empty: it needs a header row and one row per patient."]
    records = []
    for row in reader:
        if None in row:
            return [], [f"Line {reader.line_num} has more values than the header has columns."]
        records.append(row)
        if len(records) > MAX_BATCH:
            return [], [f"At most {MAX_BATCH:,} patients per file."]
    return records, []


def _predict_csv(request, version, schema: Schema, csv_form, context, personal=None):
    records, problems = _read_records(csv_form.cleaned_data["file"])
    if problems:
        for p in problems:
            csv_form.add_error("file", p)
        return render(request, "aggregation/predict.html", context)
    result = predict_records(version, records, personal=personal)
    if not result.ok:
        context["csv_errors"] = [_error_row(e) for e in result.errors]
        csv_form.add_error("file", f"{len(result.errors)} value{pluralize(len(result.errors))} need{'s' if len(result.errors) == 1 else ''} fixing; nothing was predicted.")
        return render(request, "aggregation/predict.html", context)
    # The file's own other columns (a patient or record ID) identify each row, as the
    # help text promises; the line number only when there is none.
    ids = [c for c in (records[0].keys() if records else []) if c not in schema.feature_names and c != schema.label]
    rows = [
        {"line": i + 2, "ids": [r.get(c, "") for c in ids], "values": [r.get(name, "") for name in schema.feature_names],
         "probability": p, "percent": percent(p), "outcome": _outcome(schema.label, y)}
        for i, (r, p, y) in enumerate(zip(records, result.probabilities, result.labels, strict=True))
    ]
    if request.POST.get("output") == "download":
        return _results_csv(version, schema, records, result)
    context["batch"] = {"rows": rows[:SHOWN_ROWS], "total": len(rows), "truncated": len(rows) > SHOWN_ROWS,
                        "positive": sum(result.labels), "features": [feature_label(n) for n in schema.feature_names],
                        "ids": ids}
    return render(request, "aggregation/predict.html", context)


def _error_row(err: FieldError) -> dict:
    return {"line": err.record + 2 if err.field else "", "field": err.field, "value": err.value, "message": err.message}


def _results_csv(version, schema: Schema, records, result) -> HttpResponse:
    columns = list(records[0].keys()) if records else schema.feature_names
    out = io.StringIO()
    writer = csvsafe.writer(out)  # the file's own cells are echoed: formulas neutralised
    writer.writerow([*columns, f"probability_{schema.label}", f"predicted_{schema.label}"])
    for r, p, y in zip(records, result.probabilities, result.labels, strict=True):
        writer.writerow([*(r.get(c, "") for c in columns), f"{p:.6f}", y])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="predictions-v{version.version}.csv"'
    return response
