"""``manage.py audit verify``: check the audit trail's hash chain (audit/models.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.services import verify


class Command(BaseCommand):
    help = "Audit trail tools. verify: check that no event was altered or removed."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["verify"])

    def handle(self, *args, action: str, **options):
        result = verify()
        if not result.ok:
            for problem in result.problems:
                self.stderr.write(problem)
            raise CommandError(f"the audit trail does not verify ({len(result.problems)} problem(s))")
        self.stdout.write(f"audit trail verified: {result.events} events, chain intact")
