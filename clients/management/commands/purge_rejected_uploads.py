"""Remove rejected uploads older than FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS.

    manage.py purge_rejected_uploads

Celery beat runs the same service daily (``clients.purge_rejected_uploads``); the command
is for deployments without beat, or to apply a shortened retention at once.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from clients.deletion import purge_rejected_uploads


class Command(BaseCommand):
    help = "Remove rejected uploads (and their reports) past the retention period."

    def handle(self, *args, **options):
        removed = purge_rejected_uploads()
        days = settings.FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS
        self.stdout.write(f"Removed {removed} rejected upload(s) older than {days:g} days.")
