"""Uploading a dataset: validated before anything is stored, with a readable report."""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat, pluralize

from clients.forms import UploadForm
from clients.services import UploadRefused, check_can_upload, ingest_dataset
from fedhealth import csvsafe
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
    v.UNEXPECTED_COLUMN: "Extra column (dropped, not stored)",
    v.NON_NUMERIC: "Not a number",
    v.EMPTY_VALUE: "Empty value",
    v.OUT_OF_RANGE: "Out of range",  # outside the hard limits: impossible, or a unit mistake
    v.OUTSIDE_EXPECTED: "Outside the expected range (kept)",
    v.INVALID_LABEL: "Invalid label",
    v.SINGLE_CLASS: "Only one label value (kept)",
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
    for p in [*problems, *report.get("warnings", [])]:
        shown[p["kind"]] = shown.get(p["kind"], 0) + 1
    return {
        "rows_total": 0, "rows_valid": 0, "rows_dropped": 0,
        **report,
        "counts": [
            {"kind": k, "label": kind_label(k), "count": n, "more": n - shown.get(k, 0),
             "file_level": k in v.FILE_KINDS, "kept": k in v.WARNING_KINDS}
            for k, n in report.get("counts", {}).items()
        ],
        "problems": [{**p, "label": kind_label(p["kind"])} for p in problems],
        "by_line": _by_line(problems),
        "warnings": [{**w, "label": kind_label(w["kind"])} for w in report.get("warnings", [])],
    }


def _by_line(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed problems grouped by file line, in line order (file-level ones last)."""
    lines: dict[int | None, list[dict[str, Any]]] = {}
    for p in problems:
        lines.setdefault(p.get("line"), []).append({**p, "label": kind_label(p["kind"])})
    order = sorted(lines, key=lambda n: (n is None, n or 0))
    return [{"line": n, "problems": lines[n]} for n in order]


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
                note = f", {dropped:,} invalid row{pluralize(dropped)} dropped" if dropped else ""
                flagged = result.report.counts.get(v.OUTSIDE_EXPECTED, 0)
                if flagged:
                    note += f", {flagged:,} value{pluralize(flagged)} outside the expected range kept and flagged"
                if v.SINGLE_CLASS in result.report.counts:
                    note += "; every row has one label, so AUROC will read n/a for this site"
                messages.success(request, f"“{result.dataset.name}” is ready: {result.dataset.row_count:,} rows{note}.")
                return redirect("dataset_detail", pk=result.dataset.pk)
            context["report"] = describe_report(result.report.to_dict())
            context["full_report_csv"] = _full_report_csv(upload, result.report, form.cleaned_data["policy"])
    return render(request, "clients/upload.html", context)


# Bounds the page a full report is embedded in (a few MB at most).
FULL_REPORT_MAX_PROBLEMS = 50_000


def _full_report_csv(upload, report, policy: str) -> str | None:
    """Every problem of a rejected file, one per row, ordered by line, as CSV text for
    the page's "Download the full report" link; None when the page lists them all.

    The file is validated again with no cap on the examples kept; the text goes to the
    person who uploaded the file, in this response only: it is never stored.
    """
    if sum(report.counts.values()) <= len(report.problems):
        return None
    upload.seek(0)
    full = v.validate_csv(upload.read(settings.FEDHEALTH_MAX_UPLOAD_BYTES + 1), DEFAULT_SCHEMA, policy=v.Policy(policy),
                          max_bytes=settings.FEDHEALTH_MAX_UPLOAD_BYTES, max_examples=FULL_REPORT_MAX_PROBLEMS)
    problems = sorted(full.report.problems, key=lambda p: (p.line is None, p.line or 0, p.column or ""))
    out = io.StringIO()
    writer = csvsafe.writer(out)  # the file's own cells are echoed: formulas neutralised
    writer.writerow(["line", "column", "problem", "value", "details"])
    for p in problems:
        writer.writerow([p.line if p.line is not None else "", p.column or "", kind_label(p.kind),
                         p.value if p.value is not None else "", p.message])
    return out.getvalue()


@login_required
def dataset_template(request):
    """An empty CSV to fill in: the schema's columns in order, and one example row
    inside every bound (the label's example is 1)."""
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(DEFAULT_SCHEMA.columns)
    example = [_example(f) for f in DEFAULT_SCHEMA.features]
    writer.writerow([*example, 1])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="fedhealth-template.csv"'
    return response


def _example(feature) -> str:
    if feature.min is not None and feature.max is not None:
        return f"{(feature.min + feature.max) / 2:g}"
    return f"{feature.min if feature.min is not None else feature.max if feature.max is not None else 0:g}"
