"""Big uploads (issue 15, item 5): an upload is validated from its staged file and the
canonical CSV reaches storage in chunks, never as one piece held in memory; a failure half
way leaves no dataset row and no file; the size limit is a clear error at every door."""

from __future__ import annotations

import io
import os
from pathlib import Path

import django.core.files.storage.filesystem as filesystem
import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile

from clients import services
from clients.models import Dataset
from clients.services import ingest_dataset
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_site
from fedhealth.ml.validation import validate_csv
from fedhealth.ml.validation.canonical import write_canonical_csv
from fedhealth.uploads import StagedUploadedFile, staging_dir, staging_root

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]

ROWS = 20_000  # about 450 KB: many storage chunks, seven validation read buffers
CHUNK = 64 * 1024  # django.core.files.base.File.DEFAULT_CHUNK_SIZE


def csv_body(rows: int = ROWS) -> bytes:
    return generate_site(rows, seed=5).to_csv(index=False).encode()


def canonical_of(body: bytes) -> bytes:
    out = io.BytesIO()
    write_canonical_csv(validate_csv(body).data, DEFAULT_SCHEMA, out)
    return out.getvalue()


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


class ReadRecordingUpload(StagedUploadedFile):
    """A staged upload, as the upload handler builds it, that records each read of it."""

    reads: list[int]

    def read(self, size=-1):
        data = super().read(size)
        self.reads.append(len(data))
        return data


@pytest.fixture
def staged():
    """Make a staged upload of some bytes for a site (closed after the test, as Django does)."""
    made: list[ReadRecordingUpload] = []

    def make(site, body: bytes) -> ReadRecordingUpload:
        upload = ReadRecordingUpload("big.csv", "text/csv", len(body), None, directory=staging_dir(site.slug))
        made.append(upload)
        upload.reads = []
        upload.write(body)
        upload.flush()
        upload.seek(0)
        return upload

    yield make
    for upload in made:
        upload.close()  # closing twice is harmless

class ChunkRecordingStorage(FileSystemStorage):
    """A backend that streams what it is given, as S3's does (no move of a staged file):
    records the largest piece written; fails after ``fail_after`` bytes when set."""

    largest = 0
    pieces = 0
    fail_after: int | None = None

    def _save(self, name, content):
        path = Path(self.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(path, "xb") as out:
            for chunk in content.chunks():
                cls = type(self)
                cls.largest, cls.pieces = max(cls.largest, len(chunk)), cls.pieces + 1
                if cls.fail_after is not None and written + len(chunk) > cls.fail_after:
                    out.write(chunk[: cls.fail_after - written])  # half a file, then the failure
                    raise OSError(28, "No space left on device")
                out.write(chunk)
                written += len(chunk)
        return name


@pytest.fixture
def chunk_storage(settings):
    ChunkRecordingStorage.largest, ChunkRecordingStorage.pieces, ChunkRecordingStorage.fail_after = 0, 0, None
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": f"{__name__}.ChunkRecordingStorage"},
    }
    return ChunkRecordingStorage


def test_a_staged_upload_is_validated_from_its_file_not_read_into_memory(site_a, settings, staged):
    body = csv_body()
    upload = staged(site_a, body)

    result = ingest_dataset(site_a, upload, name="ward")

    assert result.ok and result.dataset.row_count == ROWS
    assert result.dataset.size_bytes == len(canonical_of(body))
    assert upload.reads == []  # pandas read the staged file by its path, in its own buffers


def test_an_upload_kept_in_memory_is_still_accepted(site_a, settings):
    body = csv_body(200)
    upload = SimpleUploadedFile("small.csv", body)

    result = ingest_dataset(site_a, upload, name="ward")

    assert result.ok and result.dataset.row_count == 200


def test_the_canonical_file_reaches_storage_in_chunks(site_a, chunk_storage, settings, staged):
    body = csv_body()
    upload = staged(site_a, body)

    dataset = ingest_dataset(site_a, upload, name="ward").dataset

    stored = files_under(Path(settings.MEDIA_ROOT) / "datasets")
    assert [p.read_bytes() for p in stored] == [canonical_of(body)]
    assert dataset.size_bytes > 6 * CHUNK
    assert chunk_storage.largest <= CHUNK and chunk_storage.pieces >= dataset.size_bytes // CHUNK
    assert files_under(staging_root()) == [Path(upload.temporary_file_path())]  # only the upload, until closed


def test_on_local_disk_the_canonical_file_is_moved_into_place(site_a, settings, monkeypatch, staged):
    # A rename from the site's staging folder: the stored name never holds a partial file.
    moved = []
    real = filesystem.file_move_safe

    def spy(old, new, **kwargs):
        moved.append((Path(old).parent, Path(new).parent))
        return real(old, new, **kwargs)

    monkeypatch.setattr(filesystem, "file_move_safe", spy)
    upload = staged(site_a, csv_body(500))

    dataset = ingest_dataset(site_a, upload, name="ward").dataset

    assert moved == [(staging_root() / site_a.slug, Path(dataset.file.path).parent)]
    assert files_under(staging_root()) == [Path(upload.temporary_file_path())]  # only the upload, until closed


def test_a_storage_failure_half_way_leaves_no_dataset_row_and_no_file(site_a, chunk_storage, settings, staged):
    chunk_storage.fail_after = 3 * CHUNK + 100
    upload = staged(site_a, csv_body())

    with pytest.raises(OSError):
        ingest_dataset(site_a, upload, name="ward")

    assert chunk_storage.pieces >= 4  # it did fail half way
    assert not Dataset.objects.exists()
    assert files_under(Path(settings.MEDIA_ROOT) / "datasets") == []
    assert files_under(staging_root()) == [Path(upload.temporary_file_path())]  # only the upload, until closed


def test_a_failure_after_the_file_is_stored_removes_it_with_the_row(site_a, settings, monkeypatch, staged):
    def audit_down(*args, **kwargs):
        raise RuntimeError("audit trail unavailable")

    monkeypatch.setattr(services.audit, "record", audit_down)
    upload = staged(site_a, csv_body(500))

    with pytest.raises(RuntimeError):
        ingest_dataset(site_a, upload, name="ward")

    assert not Dataset.objects.exists()
    assert files_under(Path(settings.MEDIA_ROOT) / "datasets") == []
    assert files_under(staging_root()) == [Path(upload.temporary_file_path())]  # only the upload, until closed


def test_an_api_upload_past_the_limit_is_a_clear_413_and_stages_nothing(alice, client_for, settings):
    settings.FEDHEALTH_MAX_UPLOAD_BYTES = 50_000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = csv_body(10_000)
    assert len(body) > 2 * settings.FEDHEALTH_MAX_UPLOAD_BYTES

    response = client_for(alice).post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("big.csv", body), "name": "ward"}, format="multipart"
    )

    assert response.status_code == 413, response.json()
    detail = response.json()["detail"]
    assert detail.startswith("The file is larger than the 48.8\xa0KB limit") and "Nothing was stored." in detail
    assert not Dataset.objects.exists()
    assert files_under(staging_root()) == []
    assert files_under(Path(settings.MEDIA_ROOT) / "datasets") == []


def test_an_upload_at_the_limit_is_accepted(alice, client_for, settings):
    body = csv_body(300)
    settings.FEDHEALTH_MAX_UPLOAD_BYTES = len(body)

    response = client_for(alice).post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("ok.csv", body), "name": "ward"}, format="multipart"
    )

    assert response.status_code == 201, response.json()
    assert os.path.getsize(Dataset.objects.get().file.path) == len(canonical_of(body))
