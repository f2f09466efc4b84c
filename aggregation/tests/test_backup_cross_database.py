"""A backup taken on one database restores on the other: this instance (SQLite or
PostgreSQL, whichever the suite runs on) -> PostgreSQL -> SQLite, each restore done by
``manage.py restore`` in a fresh process with its own storage, each hop backed up
again. Every row, file and checksum survives both hops, and new rows get fresh ids
(sequences reset). The PostgreSQL database is this test's own, created and dropped here,
never the suite's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command

from .backup_world import build_world

pytestmark = pytest.mark.django_db

ROOT = Path(settings.BASE_DIR)
PG_SERVER = "postgres://postgres@127.0.0.1:5432"


@pytest.fixture
def restore_database():
    name = f"fedhealth_restore_{os.getpid()}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(database_url: str, media: Path, *args: str) -> str:
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
        "DATABASE_URL": database_url,
        "MEDIA_ROOT": str(media),
        "CELERY_BROKER_URL": "memory://",
    }
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _contents(archive: Path) -> tuple[dict, dict, dict]:
    """(rows per model as parsed JSON, file SHA-256s, row counts) of an archive."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        rows = {
            # NaN (a metric can be) as its text, so that it equals itself.
            m.name: json.loads(tar.extractfile(m).read(), parse_constant=str)
            for m in tar.getmembers()
            if m.name.startswith("data/")
        }
    files = {name: meta["sha256"] for name, meta in manifest["files"].items()}
    return rows, files, manifest["rows"]


# One process per hop (Django's start-up is most of the cost): restore, back up, then
# create a site and a user to show the id sequences moved past the restored rows.
HOP = (
    "from django.core.management import call_command; "
    "from clients.models import Site; from django.contrib.auth.models import User; "
    "call_command('restore', {archive!r}, verbosity=0); "
    "call_command('backup', '--out', {out!r}, verbosity=0); "
    "s = Site.objects.create(name='After restore', slug='after-restore'); "
    "u = User.objects.create(username='after-restore'); print(s.pk, u.pk)"
)


def _hop(database_url: str, media: Path, archive: Path, out: Path) -> tuple[int, int]:
    printed = _manage(
        database_url, media, "shell", "-c", HOP.format(archive=str(archive), out=str(out))
    )
    site_pk, user_pk = (int(x) for x in printed.strip().splitlines()[-1].split())
    return site_pk, user_pk


def test_backup_moves_between_sqlite_and_postgresql(
    make_site, make_dataset, make_experiment, make_user, drive, tmp_path, restore_database
):
    build_world(make_site, make_dataset, make_experiment, make_user, drive)
    first = tmp_path / "first.tar"
    call_command("backup", "--out", str(first), verbosity=0)

    ids_on_pg = _hop(restore_database, tmp_path / "pg-media", first, tmp_path / "on-pg.tar")
    ids_on_sqlite = _hop(
        f"sqlite:///{tmp_path / 'restored.sqlite3'}",
        tmp_path / "sqlite-media",
        tmp_path / "on-pg.tar",
        tmp_path / "back.tar",
    )

    original = _contents(first)
    assert original[2]["aggregation.ModelVersion"] >= 2 and original[2]["clients.Dataset"] == 2
    assert _contents(tmp_path / "on-pg.tar") == original
    assert _contents(tmp_path / "back.tar") == original
    rows = original[0]
    for site_pk, user_pk in (ids_on_pg, ids_on_sqlite):
        assert site_pk > max(row["pk"] for row in rows["data/clients.Site.json"])
        assert user_pk > max(row["pk"] for row in rows["data/auth.User.json"])
