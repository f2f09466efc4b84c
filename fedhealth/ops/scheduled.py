"""Scheduled backups (Celery beat, ``fedhealth.backup``): one archive per run in
FEDHEALTH_BACKUP_DIR, encrypted when a key is configured, the newest
FEDHEALTH_BACKUP_KEEP kept."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from .backup import BackupSummary, create_backup, read_key

logger = logging.getLogger(__name__)
PREFIX = "fedhealth-backup-"


def archives(folder: Path) -> list[Path]:
    """Scheduled archives in ``folder``, oldest first (names sort by time)."""
    return sorted(
        p for p in folder.glob(PREFIX + "*") if p.suffix in (".tar", ".enc") and p.is_file()
    )


def run_scheduled_backup() -> BackupSummary | None:
    """Write one archive and prune old ones; None when scheduled backups are off."""
    if not settings.FEDHEALTH_BACKUP_DIR:
        return None
    folder = Path(settings.FEDHEALTH_BACKUP_DIR)
    key = read_key(required=False)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")
    summary = create_backup(folder / f"{PREFIX}{stamp}{'.tar.enc' if key else '.tar'}", key=key)
    # Prune only after a good archive exists: a failing backup never deletes old ones.
    for old in archives(folder)[: -settings.FEDHEALTH_BACKUP_KEEP]:
        old.unlink(missing_ok=True)
        logger.info(
            "backup: removed %s (keeping the newest %d)", old.name, settings.FEDHEALTH_BACKUP_KEEP
        )
    logger.info(
        "backup: wrote %s (%d rows, %d files, %d bytes)",
        summary.path.name,
        summary.rows,
        summary.files,
        summary.bytes,
    )
    return summary
