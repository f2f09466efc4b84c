"""One door for datasets (clients.services.ingest_dataset): an agent-mode site cannot
upload through any door, and an upload's bytes never wait in the system temp folder."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from clients.models import Dataset
from clients.services import (
    DatasetSummaryError,
    UploadRefused,
    ingest_dataset,
    register_remote_dataset,
)
from clients.views import upload as upload_view
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_site
from fedhealth.ml.validation import validate_csv
from fedhealth.ml.validation.canonical import write_canonical_csv
from fedhealth.uploads import clean_staging, staging_root

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]

BAD = "heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n" + "abc,120,80,98,1\n" * 200


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def big_csv(rows: int = 2000) -> bytes:
    return generate_site(rows, seed=3).to_csv(index=False).encode()


@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    """The system temp folder, as tempfile sees it, made empty and private to the test."""
    path = tmp_path / "system-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    assert tempfile.gettempdir() == str(path)
    return path


@pytest.fixture
def small_memory(settings):
    """Uploads past 1 KiB go to disk, as a real CSV past 2.5 MB would."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    return settings


@pytest.fixture
def seen(monkeypatch):
    """Where each upload the views hand to the dataset service was waiting."""
    paths: list[str] = []

    def spy(site, upload, **kwargs):
        paths.append(upload.temporary_file_path())
        assert Path(paths[-1]).exists()
        return ingest_dataset(site, upload, **kwargs)

    monkeypatch.setattr(upload_view, "ingest_dataset", spy)
    return paths


# -- agent-mode sites ---------------------------------------------------------------


def test_an_agent_mode_site_cannot_upload_through_the_web(
    client, make_user, agent_site, settings, system_tmp
):
    client.force_login(make_user("dora", agent_site))

    page = client.get(reverse("dataset_upload"))
    response = client.post(
        reverse("dataset_upload"),
        {"name": "ward", "policy": "reject", "file": SimpleUploadedFile("a.csv", big_csv())},
    )

    assert "runs a site agent" in page.content.decode()
    assert response.status_code == 200
    assert any("runs a site agent" in e for e in response.context["form"].non_field_errors())
    assert not Dataset.objects.filter(site=agent_site).exists()
    assert files_under(Path(settings.MEDIA_ROOT)) == [] and files_under(system_tmp) == []


def test_the_service_itself_refuses_an_agent_mode_site(agent_site):
    with pytest.raises(UploadRefused) as caught:
        ingest_dataset(agent_site, SimpleUploadedFile("a.csv", big_csv(50)), name="x")

    assert caught.value.field == "site"
    assert not Dataset.objects.filter(site=agent_site).exists()


def test_the_agents_summary_registration_still_works(agent, summary_of, csv_bytes, agent_site):
    response = agent.post("/api/v1/agent/datasets/", summary_of(csv_bytes(120, seed=2)))

    assert response.status_code == 201, response.json()
    assert Dataset.objects.get(site=agent_site).file.name == ""


def test_a_name_the_service_cannot_store_is_refused(site_a):
    with pytest.raises(UploadRefused) as caught:
        ingest_dataset(site_a, SimpleUploadedFile("a.csv", big_csv(50)), name="n" * 256)

    assert caught.value.field == "name" and "255" in caught.value.message
    assert not Dataset.objects.exists()


# -- staging ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status", [(big_csv(), Dataset.Status.READY), (BAD.encode(), Dataset.Status.REJECTED)]
)
def test_a_web_upload_waits_in_site_staging_and_leaves_nothing_behind(
    client, alice, small_memory, system_tmp, seen, body, status
):
    client.force_login(alice)
    assert len(body) > small_memory.FILE_UPLOAD_MAX_MEMORY_SIZE

    client.post(
        reverse("dataset_upload"),
        {"name": "ward", "policy": "reject", "file": SimpleUploadedFile("a.csv", body)},
    )

    dataset = Dataset.objects.get(site=alice.membership.site)
    assert dataset.status == status
    [path] = seen
    assert Path(path).parent == staging_root() / alice.membership.site.slug
    assert files_under(staging_root()) == [] and files_under(system_tmp) == []
    stored = files_under(Path(small_memory.MEDIA_ROOT) / "datasets")
    if status == Dataset.Status.READY:
        # What is stored is the canonical CSV of the validated rows, not the upload (issue 9).
        canonical = io.BytesIO()
        write_canonical_csv(validate_csv(body).data, DEFAULT_SCHEMA, canonical)
        assert [p.read_bytes() for p in stored] == [canonical.getvalue()]
        assert oct(staging_root().stat().st_mode & 0o777) == "0o700"
    else:
        assert stored == []


def test_an_api_upload_waits_in_site_staging_and_leaves_nothing_behind(
    alice, client_for, small_memory, system_tmp
):
    response = client_for(alice).post(
        "/api/v1/datasets/",
        {"file": SimpleUploadedFile("a.csv", big_csv()), "name": "ward"},
        format="multipart",
    )

    assert response.status_code == 201, response.json()
    assert (staging_root() / alice.membership.site.slug).is_dir()
    assert files_under(staging_root()) == [] and files_under(system_tmp) == []
    assert len(files_under(Path(small_memory.MEDIA_ROOT) / "datasets")) == 1


def test_a_failed_write_leaves_no_partial_file(site_a, settings, monkeypatch):
    real_save = FileSystemStorage._save

    def disk_full(self, name, content):
        saved = real_save(self, name, content)
        Path(self.path(saved)).write_bytes(b"heart_rate,sys")  # half a file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileSystemStorage, "_save", disk_full)

    with pytest.raises(OSError):
        ingest_dataset(site_a, SimpleUploadedFile("a.csv", big_csv(100)), name="ward")

    assert not Dataset.objects.exists()
    assert files_under(Path(settings.MEDIA_ROOT) / "datasets") == []


def test_stale_staged_files_are_removed_and_fresh_ones_spared(settings):
    folder = staging_root() / "site-a"
    folder.mkdir(parents=True)
    stale, fresh, other = folder / "x1.upload", folder / "x2.upload", folder / "keep.txt"
    for path in (stale, fresh, other):
        path.write_text("heart_rate\n72\n")
    hour_ago = time.time() - settings.FEDHEALTH_STAGING_MAX_AGE - 60
    os.utime(stale, (hour_ago, hour_ago))

    assert clean_staging() == 1
    assert not stale.exists() and fresh.exists() and other.exists()
    out = io.StringIO()
    call_command("clean_staging", "--all", stdout=out)
    assert not fresh.exists() and other.exists()
    assert "removed 1 staged upload(s)" in out.getvalue()


def test_an_agents_dataset_name_is_bounded_by_the_service(agent_site, summary_of, csv_bytes):
    reg = summary_of(csv_bytes(100))
    args = (
        agent_site,
        reg["schema"],
        reg["row_count"],
        reg["positive_count"],
        reg["stats"],
        reg["summary"],
    )

    with pytest.raises(DatasetSummaryError) as caught:
        register_remote_dataset(*args, name="n" * 256)

    assert caught.value.field == "name"
    assert not Dataset.objects.filter(site=agent_site).exists()
    assert register_remote_dataset(*args, name="n" * 255)[0].name == "n" * 255
