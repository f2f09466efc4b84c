"""Project-level Celery tasks (found by autodiscovery: ``fedhealth`` is an installed app)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings


# acks_late=False, unlike the site work: a backup of a large instance may outlast
# Redis' visibility timeout, and a late ack would then hand the same backup to a second
# worker. A backup lost with its worker is simply taken at the next interval.
@shared_task(
    name="fedhealth.backup",
    acks_late=False,
    soft_time_limit=settings.FEDHEALTH_BACKUP_TIME_LIMIT,
    time_limit=settings.FEDHEALTH_BACKUP_TIME_LIMIT + 60,
)
def scheduled_backup() -> str:
    from .ops.scheduled import run_scheduled_backup

    summary = run_scheduled_backup()
    return "disabled" if summary is None else summary.path.name
