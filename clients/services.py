"""Dataset workflows: validate an upload, store it site-privately, load it for training."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction

from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.stats import SufficientStats, compute_stats
from fedhealth.ml.validation import Dataset as ArrayData
from fedhealth.ml.validation import Policy, ValidationReport, validate_csv

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
    X = data.X.astype(np.float64)
    summary = {
        f.name: {
            "unit": f.unit,
            "mean": float(X[:, i].mean()),
            "std": float(X[:, i].std()),
            "min": float(X[:, i].min()),
            "max": float(X[:, i].max()),
        }
        for i, f in enumerate(schema.features)
    }
    return stats.to_dict(), summary


def ingest_dataset(
    site: Site,
    upload: IO[bytes],
    *,
    name: str,
    schema: Schema = DEFAULT_SCHEMA,
    policy: Policy = Policy.REJECT,
    user: Any = None,
) -> IngestResult:
    """Validate an uploaded CSV and, only if it is valid, store it in site-private storage.

    A rejected upload keeps its report (so the site can see what was wrong) but leaves
    no file behind. The file is written before the row is marked ready, inside one
    transaction, so a crash never leaves a ready dataset without its file.
    """
    raw = upload.read(settings.FEDHEALTH_MAX_UPLOAD_BYTES + 1)
    result = validate_csv(raw, schema, policy=policy, max_bytes=settings.FEDHEALTH_MAX_UPLOAD_BYTES)
    report = result.report
    fields = {
        "site": site,
        "name": name[:255],
        "schema": schema.to_dict(),
        "policy": policy.value,
        "validation_report": report.to_dict(),
        "uploaded_by": user if getattr(user, "is_authenticated", False) else None,
        "size_bytes": len(raw),
    }
    if result.data is None:
        dataset = Dataset.objects.create(status=Dataset.Status.REJECTED, **fields)
        return IngestResult(dataset, report)

    data = result.data
    stats, summary = summarise_arrays(schema, data)
    with transaction.atomic():
        dataset = Dataset(
            status=Dataset.Status.READY,
            sha256=hashlib.sha256(raw).hexdigest(),
            row_count=len(data.y),
            positive_count=int(data.y.sum()),
            rows_dropped=report.rows_dropped,
            stats=stats,
            summary=summary,
            **fields,
        )
        dataset.file.save("upload.csv", ContentFile(raw), save=False)
        try:
            dataset.save()
        except Exception:
            dataset.file.delete(save=False)
            raise
    return IngestResult(dataset, report)


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
