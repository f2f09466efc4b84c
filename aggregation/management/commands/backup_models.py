"""Back up every model version (weights, manifest, log), or verify a backup.

    manage.py backup_models --out /backups/fedhealth-2026-11-28
    manage.py backup_models --verify /backups/fedhealth-2026-11-28
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from aggregation.models import Experiment
from aggregation.services.backup import backup_models, verify_backup


class Command(BaseCommand):
    help = "Copy every model version with a verified manifest to a folder, or verify one."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--out", help="folder to write the backup to")
        group.add_argument("--verify", help="backup folder to check")
        parser.add_argument("--experiment", type=int, action="append", help="only these experiment ids")

    def handle(self, *args, out, verify, experiment, **options):
        if verify:
            problems = verify_backup(Path(verify))
            if problems:
                raise CommandError("backup is damaged:\n" + "\n".join(problems))
            self.stdout.write(self.style.SUCCESS(f"{verify}: every file matches its manifest"))
            return
        queryset = Experiment.objects.filter(versions__isnull=False).distinct().order_by("pk")
        if experiment:
            queryset = queryset.filter(pk__in=experiment)
        experiments = list(queryset)
        try:
            summary = backup_models(Path(out), tqdm(experiments, desc="experiments", disable=options["verbosity"] == 0))
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(
            f"backed up {summary.versions} versions of {summary.experiments} experiments "
            f"({summary.bytes / 1024:.0f} KiB) to {out}"
        ))
