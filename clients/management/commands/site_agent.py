"""``manage.py site_agent``: the site agent (fedhealth/agent), run from a checkout.

A thin wrapper; the agent itself needs no Django (``python -m fedhealth.agent``).
"""

import argparse

from django.core.management.base import BaseCommand, CommandError

from fedhealth.agent import cli


class Command(BaseCommand):
    help = "Run this site's agent: train on a local CSV, send only weights to the server."

    def add_arguments(self, parser):
        cli.add_arguments(parser)

    def handle(self, *args, **options):
        code = cli.run(argparse.Namespace(**options))
        if code:
            raise CommandError(f"site agent exited with status {code}", returncode=code)
