"""Remove uploads left in the private staging folder by a process killed mid-upload.

    manage.py clean_staging            # staged files older than FEDHEALTH_STAGING_MAX_AGE
    manage.py clean_staging --all      # every staged file (no upload may be in flight)

``manage.py worker`` runs the first form at start.
"""

from django.core.management.base import BaseCommand

from fedhealth.uploads import clean_staging, staging_root


class Command(BaseCommand):
    help = "Delete stale staged uploads (patient rows) from the private staging folder."

    def add_arguments(self, parser):
        parser.add_argument(
            "--all", action="store_true", help="also files younger than FEDHEALTH_STAGING_MAX_AGE"
        )

    def handle(self, *args, all, **options):
        removed = clean_staging(older_than=0 if all else None)
        self.stdout.write(f"removed {removed} staged upload(s) from {staging_root()}")
