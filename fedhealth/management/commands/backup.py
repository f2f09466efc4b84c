"""Back up everything (rows, stored files, migration state) to one archive, or verify one.

manage.py backup --out /backups/fedhealth-2026-12-02.tar
manage.py backup --out /backups/fedhealth-2026-12-02.tar.enc --encrypt   (key: FEDHEALTH_BACKUP_KEY)
manage.py backup --verify /backups/fedhealth-2026-12-02.tar
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fedhealth.ops.archive import ArchiveError
from fedhealth.ops.backup import BackupError, create_backup, read_key
from fedhealth.ops.crypto import BackupKeyError
from fedhealth.ops.restore import verify_archive


class Command(BaseCommand):
    help = "Write a full backup archive (database rows and stored files), or verify one."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--out", help="archive file to write")
        group.add_argument("--verify", metavar="PATH", help="archive to check without restoring")
        parser.add_argument(
            "--encrypt",
            action="store_true",
            help="encrypt with the key in FEDHEALTH_BACKUP_KEY (AES-256-GCM)",
        )

    def handle(self, *args, out, verify, encrypt, **options):
        if verify:
            verify_command(self, verify)
            return
        try:
            key = read_key(required=True) if encrypt else None
            summary = create_backup(Path(out), key=key)
        except (BackupError, BackupKeyError, OSError) as exc:
            raise CommandError(f"backup failed: {exc}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"backed up {summary.rows} rows and {summary.files} files ({summary.bytes / 1024:.0f} KiB"
                f"{', encrypted' if summary.encrypted else ''}) to {summary.path}"
            )
        )


def verify_command(command: BaseCommand, path: str) -> None:
    try:
        manifest = verify_archive(Path(path))
    except (ArchiveError, BackupKeyError, OSError) as exc:
        raise CommandError(f"{path} is refused: {exc}") from None
    command.stdout.write(
        command.style.SUCCESS(
            f"{path}: sound; taken {manifest['created_at']} on {manifest['database']}, "
            f"{sum(manifest['rows'].values())} rows, {len(manifest['files'])} files, every checksum verified"
        )
    )
