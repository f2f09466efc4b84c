"""/readyz names each dependency that is down (database migrations, broker, storage)
with a 503; /healthz stays the process's own answer."""

from __future__ import annotations

import threading
import time

import pytest
from django.db.migrations.recorder import MigrationRecorder

from fedhealth.celery import app
from fedhealth.ops.ready import PROBE_THREAD
from tests.s3_support import BUCKET, CREDENTIALS, moto_server, s3_storage_setting

pytestmark = pytest.mark.django_db


def test_ready_when_every_dependency_answers(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body == {
        "status": "ready",
        "down": [],
        "checks": {"database": "ok", "migrations": "ok", "broker": "ok", "storage": "ok"},
    }
    assert "no-cache" in response["Cache-Control"]


def test_a_wrong_broker_url_is_named(client, monkeypatch):
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setitem(app.conf, "broker_write_url", None)
    started = time.monotonic()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert (
        response.json()["down"] == ["broker"]
        and response.json()["checks"]["broker"] == "unreachable"
    )
    assert time.monotonic() - started < 10


def test_unapplied_migrations_are_named(client):
    # Inside the test's transaction: rolled back afterwards.
    MigrationRecorder.Migration.objects.filter(app="aggregation").order_by("-id")[:1].get().delete()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["migrations"]
    assert response.json()["checks"]["migrations"] == "1 migrations not applied"


def test_a_stopped_s3_server_is_named(client, settings, monkeypatch):
    import boto3

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # Generous: the first S3 call builds boto3's client (seconds on a loaded machine).
    settings.FEDHEALTH_READYZ_TIMEOUT = 20.0
    with moto_server() as server:
        boto3.client("s3", endpoint_url=server.url, region_name="eu-west-1").create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        settings.STORAGES = {**settings.STORAGES, "default": s3_storage_setting(server.url)}
        assert client.get("/readyz").status_code == 200
        server.stop()
        started = time.monotonic()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["down"] == ["storage"]
        # A stopped server refuses connections: named well before the timeout.
        assert time.monotonic() - started < 10
        # The probe gives up by itself (botocore's retries); wait for it so nothing of
        # this test runs on into the next one.
        deadline = time.monotonic() + 60
        while (
            any(t.name == PROBE_THREAD for t in threading.enumerate())
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
