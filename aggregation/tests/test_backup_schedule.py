"""Scheduled backups (Celery beat's ``fedhealth.backup``) with retention, and the
coordinator's dashboard showing the last successful backup and warning when it is old."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fedhealth.files import read_bytes, write_bytes
from fedhealth.ops import crypto
from fedhealth.ops.restore import verify_archive
from fedhealth.ops.scheduled import archives
from fedhealth.ops.status import STATUS_NAME, last_backup
from fedhealth.tasks import scheduled_backup

pytestmark = pytest.mark.django_db


def test_beat_schedules_backups_only_with_a_folder(tmp_path, settings):
    import subprocess
    import sys

    assert "backup" not in settings.CELERY_BEAT_SCHEDULE  # the suite sets no FEDHEALTH_BACKUP_DIR
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CELERY_BEAT_SCHEDULE.get('backup'))"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
        "FEDHEALTH_BACKUP_INTERVAL_HOURS": "6",
        "FEDHEALTH_BACKUP_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    on = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "'task': 'fedhealth.backup', 'schedule': 21600.0" in on and "'queue': 'server'" in on


def test_scheduled_backups_keep_the_newest(
    settings, tmp_path, make_site, make_dataset, monkeypatch
):
    make_dataset(make_site("sched"), rows=60)
    settings.FEDHEALTH_BACKUP_DIR = str(tmp_path / "backups")
    settings.FEDHEALTH_BACKUP_KEEP = 2
    monkeypatch.delenv("FEDHEALTH_BACKUP_KEY", raising=False)
    names = [scheduled_backup.apply().get() for _ in range(3)]

    kept = archives(tmp_path / "backups")
    assert [p.name for p in kept] == names[1:] and all(n.endswith(".tar") for n in names)
    for path in kept:
        assert verify_archive(path)["rows"]["clients.Dataset"] == 1
    assert last_backup()["archive"] == str(kept[-1])

    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", crypto.generate_key())
    encrypted = scheduled_backup.apply().get()
    assert encrypted.endswith(".tar.enc") and last_backup()["encrypted"]
    assert [p.name for p in archives(tmp_path / "backups")] == [names[2], encrypted]


def test_scheduled_backups_are_off_without_a_folder(settings):
    settings.FEDHEALTH_BACKUP_DIR = ""
    assert scheduled_backup.apply().get() == "disabled"
    assert last_backup() is None


def test_dashboard_shows_the_last_backup_and_warns_when_old(client, charlie, settings, tmp_path):
    settings.FEDHEALTH_BACKUP_WARN_HOURS = 48
    client.force_login(charlie)
    page = client.get(reverse("dashboard")).content.decode()
    assert "data-backup-stale" in page and "No backup has been taken" in page

    settings.FEDHEALTH_BACKUP_DIR = str(tmp_path / "backups")
    scheduled_backup.apply().get()
    page = client.get(reverse("dashboard")).content.decode()
    assert "data-backup-stale" not in page and "data-last-backup" in page

    status = json.loads(read_bytes(STATUS_NAME))
    status["finished_at"] = (timezone.now() - timedelta(hours=49)).isoformat()
    write_bytes(STATUS_NAME, json.dumps(status).encode())
    page = client.get(reverse("dashboard")).content.decode()
    assert "data-backup-stale" in page and "The last successful backup is 2" in page


def test_site_members_do_not_see_the_dashboard(client, alice):
    client.force_login(alice)
    assert client.get(reverse("dashboard")).status_code in (403, 404)
