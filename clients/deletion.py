"""Deleting a dataset, and removing rejected uploads after their retention period.

Deleting keeps the row, reduced to its summary (counts, label balance, per-feature
summary, sufficient statistics) and the deletion record (``deleted_at``, ``deleted_by``):
experiments that trained on it keep their participation and model versions, and the
site's page still says what was there. The file goes from storage, the validation
report's quoted cells go, and the status becomes ``deleted``, which no code path turns
back into ``ready`` (creation and start accept only ready datasets).

A rejected upload never stored a file, but its report quotes cells of the file; it is
kept ``FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS`` for the site to read, then the row goes.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import services as audit

from .models import Dataset

logger = logging.getLogger(__name__)


class DatasetDeletionRefused(Exception):
    """The dataset cannot be deleted now; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def experiments_using(dataset: Dataset) -> list[str]:
    """Names of the running or paused experiments that still train on ``dataset``: the
    site has neither withdrawn from them nor withdrawn the dataset."""
    from aggregation.models import Experiment, Participant

    return list(
        Participant.objects.filter(dataset=dataset, experiment__status__in=Experiment.ACTIVE)
        .exclude(consent__in=[Participant.Consent.WITHDRAWN, Participant.Consent.DECLINED])
        .order_by("experiment__name")
        .values_list("experiment__name", flat=True)
    )


def _counts_only(report: dict[str, Any]) -> dict[str, Any]:
    # The listed problems and warnings quote the file's cells; the totals do not.
    return {k: v for k, v in (report or {}).items() if k not in ("problems", "warnings")}


def delete_dataset(dataset: Dataset, *, by: Any) -> Dataset:
    """Delete ``dataset``'s file and reduce its row to the summary and deletion record.

    Refused (``DatasetDeletionRefused``) while a running or paused experiment uses it,
    and for a dataset already deleted. The row is locked and marked first, the file is
    deleted inside the same transaction: if storage refuses, nothing is marked and the
    site can try again; if the commit fails after the file went, the row still points at
    a missing file, which every worker's file check refuses (and deleting again finishes).
    """
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().select_related("site").get(pk=dataset.pk)
        if locked.status == Dataset.Status.DELETED:
            raise DatasetDeletionRefused(f"“{locked.name}” was already deleted.")
        in_use = experiments_using(locked)
        if in_use:
            raise DatasetDeletionRefused(
                f"“{locked.name}” is in use by {', '.join(in_use)}: withdraw the dataset first (it then leaves "
                f"{'that experiment' if len(in_use) == 1 else 'those experiments'} from the next round), "
                "then delete it."
            )
        if locked.withdrawn_at is None:
            # Deleting withdraws first, through the one door for it: draft experiments that
            # proposed this dataset ask the site again (aggregation/services/consent.py).
            from aggregation.services.consent import withdraw_dataset

            withdraw_dataset(locked.pk, by)
        name, had_file = locked.file.name, bool(locked.file)
        storage = locked.file.storage
        now = timezone.now()
        # Conditional on the status it was read with: a second request finds nothing to do.
        Dataset.objects.filter(pk=locked.pk, deleted_at__isnull=True).update(
            status=Dataset.Status.DELETED,
            file="",
            deleted_at=now,
            deleted_by=by,
            validation_report=_counts_only(locked.validation_report),
        )
        audit.record(
            audit.Kind.DATASET_DELETE,
            actor=by,
            site=locked.site,
            target=f"dataset {locked.pk}",
            details={
                "name": locked.name,
                "rows": locked.row_count,
                "had_file": had_file,
                "previous_status": locked.status,
            },
        )
        if had_file:
            storage.delete(name)  # S3 and the filesystem: a missing file is not an error
    locked.refresh_from_db()
    logger.info("dataset %s deleted (file removed: %s)", locked.pk, had_file)
    return locked


def purge_rejected_uploads(now=None) -> int:
    """Remove rejected uploads older than the retention period; returns how many.

    One audit event per run that removed any (their ids and count, no names: a name
    may be all that is left of a file someone wanted gone)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS)
    with transaction.atomic():
        stale = Dataset.objects.select_for_update().filter(
            status=Dataset.Status.REJECTED, created_at__lt=cutoff
        )
        by_site: dict[int, list[int]] = {}
        for pk, site_id in stale.values_list("pk", "site_id"):
            by_site.setdefault(site_id, []).append(pk)
        if not by_site:
            return 0
        # A rejected upload never has a file, nor a participation (only ready datasets join).
        Dataset.objects.filter(pk__in=[pk for pks in by_site.values() for pk in pks]).delete()
        from .models import Site

        for site in Site.objects.filter(pk__in=by_site):
            audit.record(
                audit.Kind.RETENTION_PURGE,
                actor="system",
                site=site,
                target="rejected uploads",
                details={
                    "datasets": sorted(by_site[site.pk]),
                    "count": len(by_site[site.pk]),
                    "retention_days": settings.FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS,
                },
            )
    removed = sum(len(pks) for pks in by_site.values())
    logger.info(
        "retention: removed %d rejected upload(s) older than %s", removed, cutoff.isoformat()
    )
    return removed
