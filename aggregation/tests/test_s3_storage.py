"""STORAGE_BACKEND=s3 for real: moto's S3 server runs on 127.0.0.1 in its own process,
the storage settings come from fedhealth/settings.py with the S3 variables set, and
uploads, an experiment, downloads, backup and restore go through it. Each site's CSVs
live under their own prefix, every object is encrypted at rest, nothing is public, and
a site's CSV is never reachable through another site's session or token."""

from __future__ import annotations

import boto3
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from aggregation import services
from aggregation.models import Experiment
from clients.models import ApiToken
from tests.s3_support import BUCKET, CREDENTIALS, moto_server, s3_storage_setting

from .backup_world import describe_files, describe_rows, wipe


@pytest.fixture(scope="module")
def s3_server():
    with moto_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def s3_storage(s3_server):
    return s3_storage_setting(s3_server)


@pytest.fixture
def s3(s3_server, s3_storage, settings, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="eu-west-1")
    client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage}
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_settings_turn_on_server_side_encryption_and_no_public_acl(s3_storage, s3_server):
    options = s3_storage["OPTIONS"]
    assert s3_storage["BACKEND"] == "storages.backends.s3.S3Storage"
    assert options["object_parameters"] == {"ServerSideEncryption": "AES256"}
    assert options["default_acl"] is None and options["endpoint_url"] == s3_server


@pytest.mark.django_db
def test_upload_experiment_and_downloads_on_s3(
    s3, make_site, make_dataset, make_experiment, make_user, drive, client, s3_server
):
    site_a, site_b = make_site("s3-a"), make_site("s3-b")
    ds_a, ds_b = make_dataset(site_a, rows=100, seed=1), make_dataset(site_b, rows=100, seed=2)
    alice, bob = make_user("s3-alice", site_a), make_user("s3-bob", site_b)
    keys = _keys(s3)
    assert [k for k in keys if k.startswith("datasets/s3-a/")] == [ds_a.file.name]
    assert [k for k in keys if k.startswith("datasets/s3-b/")] == [ds_b.file.name]

    experiment = make_experiment([ds_a, ds_b], num_rounds=2)
    services.start_experiment(experiment.pk)
    assert drive(experiment.pk).status == Experiment.Status.COMPLETED
    keys = _keys(s3)
    assert f"models/{experiment.pk}/v2.safetensors" in keys
    assert any(k.startswith(f"updates/{experiment.pk}/r2/") for k in keys)
    for key in keys:  # encrypted at rest, no grant beyond the owner
        assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
        grants = s3.get_object_acl(Bucket=BUCKET, Key=key)["Grants"]
        assert all(g["Grantee"].get("Type") == "CanonicalUser" for g in grants)

    with default_storage.open(ds_a.file.name, "rb") as fh:
        csv_a = fh.read()
    client.force_login(alice)
    response = client.get(reverse("dataset_download", args=[ds_a.pk]))
    assert response.status_code == 200 and b"".join(response.streaming_content) == csv_a
    # Streamed through the view: no signed or direct bucket URL anywhere.
    page = client.get(reverse("dataset_detail", args=[ds_a.pk])).content.decode()
    assert s3_server not in page and "X-Amz" not in page and "Location" not in response.headers

    client.force_login(bob)
    assert client.get(reverse("dataset_download", args=[ds_a.pk])).status_code == 404
    assert client.get(reverse("dataset_detail", args=[ds_a.pk])).status_code == 404
    _, raw = ApiToken.issue(site=site_b, name="agent b")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    listing = api.get("/api/v1/datasets/")
    assert ds_a.file.name not in listing.content.decode() and csv_a[:40] not in listing.content
    assert api.get(f"/api/v1/datasets/{ds_a.pk}/").status_code == 404
    assert api.get(reverse("dataset_download", args=[ds_a.pk])).status_code in (302, 404)


@pytest.mark.django_db
def test_backup_and_restore_on_s3(s3, make_site, make_dataset, make_experiment, drive, tmp_path):
    datasets = [make_dataset(make_site(f"s3-bk-{i}"), rows=80, seed=i) for i in range(2)]
    experiment = make_experiment(datasets, num_rounds=1)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    rows, files = describe_rows(), describe_files()
    assert set(files) == set(_keys(s3)) - {"ops/backup-status.json"}

    call_command("backup", "--out", str(tmp_path / "s3.tar"), verbosity=0)
    wipe()
    assert [k for k in _keys(s3) if not k.startswith("ops/")] == []
    call_command("restore", str(tmp_path / "s3.tar"), verbosity=0)

    assert describe_rows() == rows and describe_files() == files
    for key in files:
        assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
