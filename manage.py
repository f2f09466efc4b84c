#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    # The core-only commands run before (and without) the project's settings, so they
    # need no SECRET_KEY, DEBUG or .env: fedhealth/management/core.py.
    from fedhealth.management.core import CORE_COMMANDS

    if len(sys.argv) > 1 and sys.argv[1] in CORE_COMMANDS:
        from fedhealth.management.core import run

        run(sys.argv)
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedhealth.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
