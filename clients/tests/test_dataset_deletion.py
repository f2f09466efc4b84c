"""Deleting a dataset: the file leaves storage (filesystem and a real S3 server, moto's),
the row keeps its summary and the deletion record, it never becomes usable again, an
audit event is written and the chain verifies; a dataset a running experiment trains on
must be withdrawn first. Rejected uploads go after their retention period."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from aggregation.models import Experiment, ModelVersion, Participant
from aggregation.services.consent import withdraw_dataset
from audit.models import AuditEvent
from audit.services import verify
from clients.deletion import DatasetDeletionRefused, delete_dataset, purge_rejected_uploads
from clients.models import Dataset, Membership
from clients.services import ingest_dataset
from tests.s3_support import BUCKET, CREDENTIALS, moto_server, s3_storage_setting

pytestmark = pytest.mark.django_db

BAD_CSV = (
    b"heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n71,121,81,97,1\nSECRET-CELL,120,80,98,0\n"
)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_a(make_user, site_a):
    return make_user("ada", site_a, Membership.Role.SITE_ADMIN)


def stored_path(dataset: Dataset) -> Path:
    return Path(django_settings.MEDIA_ROOT) / dataset.file.name


def test_site_admin_deletes_a_dataset_from_its_page(admin_a, site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=120, seed=3)
    path = stored_path(dataset)
    assert path.exists()
    summary, rows, positives = dataset.summary, dataset.row_count, dataset.positive_count
    client = signed_in(admin_a)
    assert b"Delete dataset" in client.get(reverse("dataset_detail", args=[dataset.pk])).content

    response = client.post(reverse("dataset_delete", args=[dataset.pk]), follow=True)
    assert response.status_code == 200 and b"was deleted" in response.content
    assert not path.exists()
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.DELETED and not dataset.file
    assert dataset.deleted_by == admin_a and dataset.deleted_at is not None
    assert dataset.withdrawn_at is not None  # deleting withdraws first
    assert (dataset.summary, dataset.row_count, dataset.positive_count) == (
        summary,
        rows,
        positives,
    )
    assert b"Delete dataset" not in response.content and b"data-deleted" in response.content
    event = AuditEvent.objects.filter(kind="dataset_delete").get()
    assert (event.actor, event.site_id, event.target) == ("ada", site_a.pk, f"dataset {dataset.pk}")
    assert event.details["had_file"] is True and event.details["rows"] == rows
    assert verify().ok
    call_command("audit", "verify")
    # Nothing is left to download, and a second deletion changes nothing.
    assert client.get(reverse("dataset_download", args=[dataset.pk])).status_code == 404
    with pytest.raises(DatasetDeletionRefused, match="already deleted"):
        delete_dataset(dataset, by=admin_a)
    assert AuditEvent.objects.filter(kind="dataset_delete").count() == 1


def test_a_deleted_dataset_never_becomes_usable_again(admin_a, site_a, make_dataset):
    from aggregation.services.creation import ExperimentInvalid, create_experiment

    dataset = delete_dataset(make_dataset(site_a, rows=80, seed=4), by=admin_a)
    with (
        pytest.raises(IntegrityError),
        transaction.atomic(),
    ):  # the database refuses a ready row without a record
        Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.READY)
    with (
        pytest.raises(IntegrityError),
        transaction.atomic(),
    ):  # or a deleted one that points at a file again
        Dataset.objects.filter(pk=dataset.pk).update(file="datasets/site-a/back.csv")
    with pytest.raises(ExperimentInvalid):
        create_experiment(name="again", datasets=[dataset], num_rounds=1, min_sites=1)


def test_a_dataset_in_a_running_experiment_must_be_withdrawn_first(
    admin_a, site_a, make_dataset, make_experiment
):
    dataset = make_dataset(site_a, rows=90, seed=5)
    experiment = make_experiment([dataset], name="Running study")
    Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.RUNNING)
    client = signed_in(admin_a)
    response = client.post(reverse("dataset_delete", args=[dataset.pk]), follow=True)
    assert b"in use by Running study" in response.content and b"withdraw" in response.content
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY and stored_path(dataset).exists()
    assert not AuditEvent.objects.filter(kind="dataset_delete").exists()

    withdraw_dataset(dataset.pk, admin_a)  # the site leaves the experiment from its next round
    path = stored_path(dataset)
    client.post(reverse("dataset_delete", args=[dataset.pk]))
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.DELETED and not path.exists()


def test_finished_experiments_keep_their_models_and_drafts_ask_again(world, make_user):
    admin = make_user("ada", world.site_a, Membership.Role.SITE_ADMIN)
    versions = list(
        ModelVersion.objects.filter(experiment=world.shared).values_list("pk", "weights_file")
    )
    delete_dataset(world.ds_a, by=admin)
    assert (
        list(ModelVersion.objects.filter(experiment=world.shared).values_list("pk", "weights_file"))
        == versions
    )
    from django.core.files.storage import default_storage

    assert all(default_storage.exists(name) for _, name in versions)
    assert (
        Participant.objects.get(experiment=world.shared, site=world.site_a).dataset_id
        == world.ds_a.pk
    )
    draft = Participant.objects.get(experiment=world.draft, site=world.site_a)
    assert draft.dataset is None and draft.consent == Participant.Consent.INVITED
    # The report kept only its counts: the quoted cells of dropped rows are gone.
    world.ds_a.refresh_from_db()
    assert "problems" not in world.ds_a.validation_report


def test_who_may_delete(admin_a, alice, make_user, site_a, site_b, make_dataset, charlie):
    dataset = make_dataset(site_a, rows=60, seed=6)
    other_admin = make_user("bea", site_b, Membership.Role.SITE_ADMIN)
    assert signed_in(alice).post(reverse("dataset_delete", args=[dataset.pk])).status_code == 403
    assert (
        signed_in(other_admin).post(reverse("dataset_delete", args=[dataset.pk])).status_code == 404
    )
    assert signed_in(charlie).post(reverse("dataset_delete", args=[dataset.pk])).status_code == 403
    assert signed_in(admin_a).get(reverse("dataset_delete", args=[dataset.pk])).status_code == 405
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY and stored_path(dataset).exists()
    assert (
        b"Delete dataset"
        not in signed_in(alice).get(reverse("dataset_detail", args=[dataset.pk])).content
    )


# -- S3 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server():
    with moto_server() as server:
        yield server.url


@pytest.fixture
def s3(s3_server, settings, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="eu-west-1")
    client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage_setting(s3_server)}
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_deletion_removes_the_object_from_s3(s3, admin_a, site_a, site_b, make_dataset):
    dataset = make_dataset(site_a, rows=70, seed=7)
    kept = make_dataset(site_b, rows=70, seed=8)
    assert keys(s3) == sorted([dataset.file.name, kept.file.name])
    response = signed_in(admin_a).post(reverse("dataset_delete", args=[dataset.pk]))
    assert response.status_code == 302
    assert keys(s3) == [kept.file.name]  # only this dataset's object went
    assert AuditEvent.objects.filter(kind="dataset_delete", target=f"dataset {dataset.pk}").exists()
    assert verify().ok


# -- retention of rejected uploads ---------------------------------------------------------


def rejected(site, age_days: float) -> Dataset:
    dataset = ingest_dataset(site, io.BytesIO(BAD_CSV), name=f"export-{age_days}.csv").dataset
    assert dataset.status == Dataset.Status.REJECTED and "SECRET-CELL" in str(
        dataset.validation_report
    )
    Dataset.objects.filter(pk=dataset.pk).update(
        created_at=timezone.now() - timedelta(days=age_days)
    )
    return dataset


def test_rejected_uploads_go_after_the_retention_period(settings, site_a, site_b, make_dataset):
    settings.FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS = 30
    old_a, old_b, fresh = rejected(site_a, 31), rejected(site_b, 45), rejected(site_a, 29)
    ready = make_dataset(site_a, rows=50, seed=9)
    Dataset.objects.filter(pk=ready.pk).update(created_at=timezone.now() - timedelta(days=400))

    assert purge_rejected_uploads() == 2
    assert set(Dataset.objects.values_list("pk", flat=True)) == {fresh.pk, ready.pk}
    events = {e.site_id: e for e in AuditEvent.objects.filter(kind="retention_purge")}
    assert events[site_a.pk].details["datasets"] == [old_a.pk] and events[site_b.pk].details[
        "datasets"
    ] == [old_b.pk]
    assert all(e.actor == "system" for e in events.values())
    assert purge_rejected_uploads() == 0  # idempotent: a redelivered task finds nothing
    assert verify().ok


def test_the_command_and_the_beat_task_apply_the_setting(settings, site_a, capsys):
    from clients.tasks import purge_rejected_uploads as task

    settings.FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS = 7
    rejected(site_a, 8)
    call_command("purge_rejected_uploads")
    assert "Removed 1 rejected upload(s) older than 7 days." in capsys.readouterr().out
    rejected(site_a, 10)
    assert task.apply().get() == 1  # the task Celery beat schedules, run in-process
    assert not Dataset.objects.exists()
    entry = django_settings.CELERY_BEAT_SCHEDULE["purge-rejected-uploads"]
    assert (
        entry["task"] == task.name == "clients.purge_rejected_uploads"
        and entry["schedule"] == 24 * 3600
    )
