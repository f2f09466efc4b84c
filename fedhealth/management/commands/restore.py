"""Restore a backup archive into an empty instance, or verify one.

manage.py restore /backups/fedhealth-2026-12-02.tar
manage.py restore --verify /backups/fedhealth-2026-12-02.tar
manage.py restore --force /backups/fedhealth-2026-12-02.tar   (replaces what is there)
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fedhealth.ops.archive import ArchiveError
from fedhealth.ops.crypto import BackupKeyError
from fedhealth.ops.restore import RestoreError, restore_backup

from .backup import verify_command


class Command(BaseCommand):
    help = "Restore a full backup archive into an empty instance (database and storage)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="archive to restore (or to verify with --verify)")
        parser.add_argument("--verify", action="store_true", help="only check the archive")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace the rows and files of a non-empty instance",
        )

    def handle(self, *args, path, verify, force, **options):
        if verify:
            verify_command(self, path)
            return
        log = (
            (lambda line: self.stdout.write(line)) if options["verbosity"] else (lambda line: None)
        )
        try:
            summary = restore_backup(Path(path), force=force, log=log)
        except (ArchiveError, BackupKeyError, RestoreError) as exc:
            raise CommandError(f"{path} was not restored: {exc}") from None
        except OSError as exc:
            # Rows load in one transaction, but files may already be in storage.
            raise CommandError(
                f"{path} was not restored: {exc}. Some files may have been written; after fixing the cause, "
                "run the restore again with --force"
            ) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"restored {summary.rows} rows and {summary.files} files (backup taken {summary.created_at} "
                f"on {summary.database})"
            )
        )
