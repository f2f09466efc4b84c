"""Uploading a dataset: validated before anything is stored, with a readable report."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat

from clients.forms import UploadForm
from clients.services import UploadRefused, check_can_upload, ingest_dataset
from fedhealth.ml import validation as v
from fedhealth.ml.schema import DEFAULT_SCHEMA

from .access import limit_upload_size, site_member_required

KIND_LABELS = {
    v.FILE_TOO_LARGE: "File too large",
    v.NOT_UTF8: "Not UTF-8 text",
    v.EMPTY_FILE: "Empty file",
    v.HEADER_ONLY: "No rows under the header",
    v.WRONG_DELIMITER: "Not comma-separated",
    v.DUPLICATE_HEADER: "Duplicate column",
    v.MISSING_COLUMN: "Missing column",
    v.MALFORMED_ROW: "Malformed row",
    v.UNEXPECTED_COLUMN: "Extra column (ignored)",
    v.NON_NUMERIC: "Not a number",
    v.EMPTY_VALUE: "Empty value",
    v.OUT_OF_RANGE: "Out of range",
    v.INVALID_LABEL: "Invalid label",
    v.SINGLE_CLASS: "Only one label value",
    v.NO_VALID_ROWS: "No valid rows",
}


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " ").capitalize())


def describe_report(report: dict[str, Any]) -> dict[str, Any] | None:
    """A stored validation report (``ValidationReport.to_dict()``) ready for a table."""
    if not report:
        return None
    problems = report.get("problems", [])
    shown: dict[str, int] = {}
    for p in problems:
        shown[p["kind"]] = shown.get(p["kind"], 0) + 1
    return {
        "rows_total": 0, "rows_valid": 0, "rows_dropped": 0,
        **report,
        "counts": [
            {"kind": k, "label": kind_label(k), "count": n, "more": n - shown.get(k, 0),
             "file_level": k in v.FILE_KINDS}
            for k, n in report.get("counts", {}).items()
        ],
        "problems": [{**p, "label": kind_label(p["kind"])} for p in problems],
        "warnings": [{**w, "label": kind_label(w["kind"])} for w in report.get("warnings", [])],
    }


def _too_large(form: UploadForm) -> None:
    limit = filesizeformat(settings.FEDHEALTH_MAX_UPLOAD_BYTES)
    form.add_error("file", f"The file is larger than the {limit} limit. Split it, or ask your "
                           "coordinator to raise FEDHEALTH_MAX_UPLOAD_BYTES. Nothing was stored.")


@site_member_required
@limit_upload_size("FEDHEALTH_MAX_UPLOAD_BYTES")
def dataset_upload(request):
    form = UploadForm(request.POST or None, request.FILES or None)
    context: dict[str, Any] = {"form": form, "site": request.site, "limit": settings.FEDHEALTH_MAX_UPLOAD_BYTES,
                               "schema": DEFAULT_SCHEMA}
    if request.method != "POST":
        try:
            check_can_upload(request.site)
        except UploadRefused as exc:  # say so before anyone picks a file
            messages.error(request, exc.message)
    else:
        if getattr(request, "upload_too_large", False):
            form.is_valid()  # clean the other fields so they are shown again
            form.errors.pop("file", None)  # "required": the file was cut off, not missing
            _too_large(form)
        elif form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                result = ingest_dataset(
                    request.site, upload, name=form.cleaned_data["name"],
                    policy=v.Policy(form.cleaned_data["policy"]), user=request.user,
                )
            except UploadRefused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
                return render(request, "clients/upload.html", context)
            if result.ok:
                dropped = result.dataset.rows_dropped
                note = f", {dropped:,} invalid row(s) dropped" if dropped else ""
                messages.success(request, f"“{result.dataset.name}” is ready: {result.dataset.row_count:,} rows{note}.")
                return redirect("dataset_detail", pk=result.dataset.pk)
            context["report"] = describe_report(result.report.to_dict())
    return render(request, "clients/upload.html", context)
