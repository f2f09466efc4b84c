"""Dataset workflows: validate an upload, store it site-privately, load it for training."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.files.base import File
from django.db import transaction

from audit import services as audit
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.stats import SufficientStats, compute_stats, feature_summary
from fedhealth.ml.validation import Dataset as ArrayData
from fedhealth.ml.validation import Policy, ValidationReport, validate_csv
from fedhealth.ml.validation.canonical import write_canonical_csv
from fedhealth.uploads import SUFFIX, staging_dir

from .models import Dataset, Site


@dataclass(frozen=True)
class IngestResult:
    dataset: Dataset
    report: ValidationReport

    @property
    def ok(self) -> bool:
        return self.dataset.status == Dataset.Status.READY


def summarise_arrays(schema: Schema, data: ArrayData) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a site may share about its rows: sufficient statistics and a per-feature
    summary (count, mean, std, min, max). Never a row."""
    stats = compute_stats(data.X)
    summary = feature_summary(schema.feature_names, [f.unit for f in schema.features], data.X)
    return stats.to_dict(), summary


class UploadRefused(Exception):
    """An upload this site may not make, or a field the service will not store; nothing
    was read or stored. ``field`` names the input (``site`` when the site itself may not)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


MAX_DATASET_NAME = 255  # Dataset.name's column


def check_can_upload(site: Site) -> None:
    """Raise ``UploadRefused`` unless ``site`` may store a CSV here (hosted and active)."""
    if site.mode == Site.Mode.AGENT:
        raise UploadRefused(
            "site",
            f"{site.name} runs a site agent: its data stays on its own machine, and the agent "
            "registers a summary instead. Nothing was uploaded or stored.",
        )
    if not site.is_active:
        raise UploadRefused("site", f"{site.name} is not active; nothing was stored.")


def _dataset_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UploadRefused("name", "The dataset needs a name.")
    name = name.strip()
    if len(name) > MAX_DATASET_NAME or "\x00" in name:
        raise UploadRefused("name", f"The name must be 1 to {MAX_DATASET_NAME} characters, without NUL.")
    return name


def ingest_dataset(
    site: Site,
    upload: IO[bytes],
    *,
    name: str,
    schema: Schema = DEFAULT_SCHEMA,
    policy: Policy = Policy.REJECT,
    user: Any = None,
) -> IngestResult:
    """The one door for a hosted site's CSV (web upload, API, commands): validate it and,
    only if it is valid, store it in site-private storage.

    Raises ``UploadRefused`` before reading anything when the site may not upload (an
    agent site keeps its rows on its own machine) or the name is unusable. A rejected
    upload keeps its report (so the site can see what was wrong) but leaves no file
    behind. The file is written before the row is marked ready, inside one transaction,
    so a crash never leaves a ready dataset without its file; a partial file is removed.

    What is stored is the canonical CSV of the rows that were loaded (the schema's columns
    in its order, fedhealth/ml/validation/canonical.py), never the upload: extra columns
    (an MRN, a name) and dropped rows never reach storage; the report lists the columns
    dropped and calls out those that look like identifiers. ``sha256`` and ``size_bytes``
    are the stored file's, which workers verify before every task.
    """
    check_can_upload(site)
    name = _dataset_name(name)
    limit = settings.FEDHEALTH_MAX_UPLOAD_BYTES
    staged = getattr(upload, "temporary_file_path", None)
    if staged is not None:
        # A staged upload (past FILE_UPLOAD_MAX_MEMORY_SIZE) is validated from its file:
        # pandas reads the path in its own buffers, never a copy of the upload in memory.
        path = staged()
        upload_size = os.path.getsize(path)
        result = validate_csv(path, schema, policy=policy, max_bytes=limit)
    else:  # an upload kept in memory (small) or a stream from a command
        raw = upload.read(limit + 1)
        upload_size = len(raw)
        result = validate_csv(raw, schema, policy=policy, max_bytes=limit)
        del raw  # the upload's bytes are not what is stored
    report = result.report
    fields = {
        "site": site,
        "name": name,
        "schema": schema.to_dict(),
        "policy": policy.value,
        "validation_report": report.to_dict(),
        "uploaded_by": user if getattr(user, "is_authenticated", False) else None,
        "size_bytes": upload_size,
    }
    if result.data is None:
        dataset = Dataset.objects.create(status=Dataset.Status.REJECTED, **fields)
        _record_upload(dataset, report)
        return IngestResult(dataset, report)

    data = result.data
    stats, summary = summarise_arrays(schema, data)
    dataset = Dataset(
        status=Dataset.Status.READY,
        row_count=len(data.y),
        positive_count=int(data.y.sum()),
        rows_dropped=report.rows_dropped,
        stats=stats,
        summary=summary,
        **fields,
    )
    # Staged beside uploads (site-private, cleaned by clean_staging if a crash leaves it),
    # written in blocks of rows; the storage then moves it in place (a rename on local
    # disk, so the stored name never holds a partial file) or streams it in chunks (S3).
    with tempfile.NamedTemporaryFile(dir=staging_dir(site.slug), suffix=SUFFIX, delete=False) as canonical:
        staged_canonical = canonical.name
        try:
            dataset.size_bytes, dataset.sha256 = write_canonical_csv(data, schema, canonical)
            canonical.flush()
            canonical.seek(0)
            try:
                with transaction.atomic():
                    _store(dataset, _StagedFile(canonical))
                    dataset.save()
                    _record_upload(dataset, report)
            except BaseException:
                # The row is rolled back: its file goes too (files before rows).
                if dataset.file.name:
                    dataset.file.storage.delete(dataset.file.name)
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged_canonical)  # moved into storage, unless it was streamed
    return IngestResult(dataset, report)


class _StagedFile(File):
    """A finished staging file: ``temporary_file_path`` lets a file-system storage move it
    into place instead of copying it."""

    def temporary_file_path(self) -> str:
        return self.file.name


def _record_upload(dataset: Dataset, report: ValidationReport) -> None:
    """The audit event of an upload: counts and column names, never a cell."""
    audit.record(audit.Kind.UPLOAD, actor=dataset.uploaded_by, site=dataset.site, target=f"dataset {dataset.pk}",
                 details={"name": dataset.name, "status": dataset.status, "rows": dataset.row_count,
                          "rows_dropped": dataset.rows_dropped, "columns_dropped": report.columns_dropped})


def _store(dataset: Dataset, content: File) -> None:
    """Write the canonical file into the site's private storage (streamed from its
    staging file by the storage). A failed write leaves no partial file."""
    storage = dataset.file.storage
    name = dataset.file.field.generate_filename(dataset, "upload.csv")
    try:
        dataset.file.name = storage.save(name, content, max_length=dataset.file.field.max_length)
    except BaseException:
        if storage.exists(name):
            storage.delete(name)
        raise


class DatasetFileChanged(ValueError):
    """A hosted dataset's stored file is missing or no longer the file that was validated."""


# Per process: dataset pk -> (file name, size, modification time) of the last stored file
# whose SHA-256 matched. A worker checks its site's file before every task; hashing only
# when the size or the modification time moved keeps that check to one stat call.
_verified: dict[int, tuple[str, int, float]] = {}
_VERIFIED_MAX = 1024


def verify_dataset_file(dataset: Dataset) -> None:
    """Raise ``DatasetFileChanged`` unless ``dataset``'s stored file still exists and
    still has the SHA-256 recorded when it was validated. The messages hold no path."""
    storage, name = dataset.file.storage, dataset.file.name
    try:
        size = storage.size(name)
        stamp = (name, size, storage.get_modified_time(name).timestamp())
    except (FileNotFoundError, OSError):
        _verified.pop(dataset.pk, None)
        raise DatasetFileChanged(f"dataset {dataset.pk}: the stored file is missing") from None
    if _verified.get(dataset.pk) == stamp:
        return
    # A different size than was stored cannot be the same file (size_bytes is 0 on rows
    # that predate it: then only the hash decides).
    resized = bool(dataset.size_bytes) and size != dataset.size_bytes
    digest = hashlib.sha256()
    if not resized:
        with storage.open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    if resized or digest.hexdigest() != dataset.sha256:
        _verified.pop(dataset.pk, None)
        raise DatasetFileChanged(f"dataset {dataset.pk}: the stored file changed since it was validated")
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[dataset.pk] = stamp


def load_dataset_arrays(dataset: Dataset) -> ArrayData:
    """Re-read a stored dataset for training, checking it is the file that was validated."""
    with dataset.file.open("rb") as fh:
        raw = fh.read()
    if hashlib.sha256(raw).hexdigest() != dataset.sha256:
        raise ValueError(f"dataset {dataset.pk}: stored file does not match its SHA-256")
    result = validate_csv(
        raw, Schema.from_dict(dataset.schema), policy=Policy(dataset.policy),
        max_bytes=max(len(raw), 1),
    )
    if result.data is None:
        raise ValueError(f"dataset {dataset.pk} no longer validates: {result.report.format()}")
    return result.data


def dataset_stats(dataset: Dataset) -> SufficientStats:
    return SufficientStats.from_dict(dataset.stats)


# -- datasets of remote (agent) sites ------------------------------------------------

import json  # noqa: E402  (appended section: the module head is edited elsewhere)

_SUMMARY_KEYS = {"unit", "mean", "std", "min", "max"}


class DatasetSummaryError(ValueError):
    """A remote dataset summary is malformed; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise DatasetSummaryError("summary", f"{where} must be a finite number, got {value!r}")
    return float(value)


def _check_summary(schema: Schema, summary: Any) -> dict[str, Any]:
    if not isinstance(summary, dict) or set(summary) != set(schema.feature_names):
        raise DatasetSummaryError(
            "summary", f"summary must have exactly one entry per feature: {', '.join(schema.feature_names)}"
        )
    clean: dict[str, Any] = {}
    for feature in schema.features:
        entry = summary[feature.name]
        if not isinstance(entry, dict) or set(entry) != _SUMMARY_KEYS:
            raise DatasetSummaryError(
                "summary", f"summary[{feature.name!r}] must have exactly the keys {sorted(_SUMMARY_KEYS)}"
            )
        nums = {k: _finite(entry[k], f"summary[{feature.name!r}][{k!r}]") for k in ("mean", "std", "min", "max")}
        slack = 1e-6 * max(1.0, abs(nums["min"]), abs(nums["max"]))
        if nums["std"] < 0 or not nums["min"] - slack <= nums["mean"] <= nums["max"] + slack:
            raise DatasetSummaryError("summary", f"summary[{feature.name!r}] needs std >= 0 and min <= mean <= max")
        clean[feature.name] = {"unit": feature.unit, **nums}
    return clean


def _check_stats(schema: Schema, stats: Any, row_count: int) -> SufficientStats:
    try:
        parsed = SufficientStats.from_dict(stats)
    except ValueError as exc:
        raise DatasetSummaryError("stats", str(exc)) from None
    if parsed.count != row_count:
        raise DatasetSummaryError("stats", f"stats count {parsed.count} differs from row_count {row_count}")
    if parsed.dim != len(schema.features):
        raise DatasetSummaryError(
            "stats", f"stats have {parsed.dim} features but the schema has {len(schema.features)}"
        )
    # Cauchy-Schwarz: n * sum(x^2) >= (sum x)^2 for real rows; a small relative slack
    # absorbs float rounding. Anything else cannot come from real data.
    lhs, rhs = parsed.count * parsed.sumsq, np.square(parsed.sum)
    if (lhs < rhs - 1e-9 * np.maximum(np.abs(rhs), 1.0)).any():
        raise DatasetSummaryError("stats", "stats are inconsistent: sumsq is smaller than sum^2 / count")
    return parsed


def register_remote_dataset(
    site: Site,
    schema: dict[str, Any],
    row_count: int,
    positive_count: int,
    stats: dict[str, Any],
    summary: dict[str, Any],
    *,
    name: str = "",
) -> tuple[Dataset, bool]:
    """Record what an agent site may share about its local CSV: never a row.

    Creates a READY dataset with no file, from the schema, the row and positive
    counts, the sufficient statistics (``{"count", "sum", "sumsq"}``, each vector of
    length d = number of features) and the per-feature summary (``{feature: {"unit",
    "mean", "std", "min", "max"}}``). Every shape is checked strictly
    (``DatasetSummaryError`` names the bad field). Registering the same summary again
    returns the existing dataset, so a restarted agent does not multiply its datasets.
    Returns (dataset, created).
    """
    from fedhealth.ml.schema import SchemaError

    try:
        schema_obj = Schema.from_dict(schema)
    except SchemaError as exc:
        raise DatasetSummaryError("schema", str(exc)) from None
    for field_name, value in (("row_count", row_count), ("positive_count", positive_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetSummaryError(field_name, f"{field_name} must be a non-negative integer")
    # One label only is fine (a referral centre: every patient has the condition): the site
    # trains, and the metrics that need both classes are n/a for it (issue 10).
    if row_count < 1 or positive_count > row_count:
        raise DatasetSummaryError("positive_count", "positive_count must be at most row_count, with at least one row")
    if not isinstance(name, str) or len(name) > MAX_DATASET_NAME or "\x00" in name:
        raise DatasetSummaryError("name", f"name must be at most {MAX_DATASET_NAME} characters, without NUL")
    parsed = _check_stats(schema_obj, stats, row_count)
    clean_summary = _check_summary(schema_obj, summary)
    canonical = {
        "schema": schema_obj.to_dict(), "row_count": row_count, "positive_count": positive_count,
        "stats": parsed.to_dict(), "summary": clean_summary,
    }
    fingerprint = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    with transaction.atomic():
        existing = (
            Dataset.objects.select_for_update()
            .filter(site=site, file="", sha256=fingerprint, status=Dataset.Status.READY)
            .first()
        )
        if existing is not None:
            return existing, False
        dataset = Dataset.objects.create(
            site=site, name=name.strip() or f"{site.slug} (remote)"[:MAX_DATASET_NAME], schema=canonical["schema"],
            sha256=fingerprint, row_count=row_count, positive_count=positive_count,
            stats=canonical["stats"], summary=clean_summary, status=Dataset.Status.READY,
            validation_report={"ok": True, "source": "agent", "rows_total": row_count, "rows_valid": row_count},
        )
        audit.record(audit.Kind.AGENT_REGISTER, site=site, target=f"dataset {dataset.pk}",
                     details={"name": dataset.name, "rows": row_count})
    return dataset, True
