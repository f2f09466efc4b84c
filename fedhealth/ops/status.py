"""The last successful backup, as the dashboard and /metrics show it.

Kept in the default storage (``ops/backup-status.json``) rather than the database: the
web process, the beat worker and a coordinator running ``manage.py backup`` by hand all
see the same storage, and recording a backup needs no migration. Backups skip ``ops/``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from fedhealth.files import read_bytes, write_bytes

logger = logging.getLogger(__name__)
STATUS_PREFIX = "ops/"
STATUS_NAME = STATUS_PREFIX + "backup-status.json"


def record_backup(*, archive: str, size: int, encrypted: bool, rows: int, files: int) -> None:
    status = {
        "finished_at": timezone.now().isoformat(),
        "archive": archive,
        "size": size,
        "encrypted": encrypted,
        "rows": rows,
        "files": files,
    }
    write_bytes(STATUS_NAME, json.dumps(status).encode())


def last_backup() -> dict | None:
    """The last successful backup (``finished_at`` as an aware datetime), or None."""
    try:
        if not default_storage.exists(STATUS_NAME):
            return None
        status = json.loads(read_bytes(STATUS_NAME))
        status["finished_at"] = datetime.fromisoformat(status["finished_at"])
    except Exception as exc:  # storage down (any client's error) or a damaged file
        # The dashboard and /metrics then show "no backup", a warning, rather than failing.
        logger.warning("backup status unreadable: %r", exc)
        return None
    return status


def backup_age_seconds() -> float | None:
    status = last_backup()
    return None if status is None else (timezone.now() - status["finished_at"]).total_seconds()


def backup_is_stale(status: dict | None) -> bool:
    """Older than FEDHEALTH_BACKUP_WARN_HOURS, or none at all."""
    if status is None:
        return True
    return timezone.now() - status["finished_at"] > timedelta(
        hours=settings.FEDHEALTH_BACKUP_WARN_HOURS
    )
