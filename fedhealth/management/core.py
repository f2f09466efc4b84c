"""The core-only commands, `simulate` and `generate_sample`, without project settings.

They use only the Django-free core (``fedhealth.ml``): no database, no apps, no
SECRET_KEY. ``manage.py`` sends them here before the project's settings are loaded, so
they run in any shell, with or without a .env, as the README prints them. They stay
ordinary management commands (``call_command("simulate", ...)`` works under the
project's settings too); here they run under Django's built-in defaults only.
"""

from __future__ import annotations

import importlib

CORE_COMMANDS = ("simulate", "generate_sample")


def run(argv: list[str]) -> None:
    """Run ``argv[1]`` (one of CORE_COMMANDS) with ``argv[2:]`` as its arguments."""
    from django.conf import settings

    if not settings.configured:
        # Django's defaults: no apps, no database (the dummy backend), no key. Nothing
        # these commands do needs more; anything that did would fail loudly.
        settings.configure()
    # No django.setup(): with no apps there is no registry to fill, and its URL-prefix
    # and logging set-up import django.http and django.db.models (~0.15 s CPU) for a
    # command that serves no request and logs nothing through Django.
    command = importlib.import_module(f"fedhealth.management.commands.{argv[1]}").Command()
    command.run_from_argv(argv)
