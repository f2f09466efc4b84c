"""What a hosted upload stores (issue 9): only the schema's columns of the rows used, as a
canonical CSV; never an extra column. The report lists the columns dropped and calls out
those that look like identifiers."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from clients.models import Dataset
from clients.services import ingest_dataset, load_dataset_arrays, verify_dataset_file
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_site
from fedhealth.ml.validation import Policy, validate_csv

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]

MRN = "MRN-7730021"  # a distinctive identifier value: it must appear in nothing served


def _upload_csv(rows: int = 60) -> bytes:
    frame = generate_site(rows, seed=11)
    frame.insert(0, "MRN", [f"MRN-77300{i:02d}" for i in range(rows)])
    frame["Patient Name"] = [f"Patient {i}" for i in range(rows)]
    frame["ward"] = "7B"
    frame = frame[["spo2", "MRN", "healthy", "heart_rate", "Patient Name", "systolic_bp", "ward", "diastolic_bp"]]
    text = frame.to_csv(index=False)
    return (text + "MRN-BAD,72,abc,1,Patient X,120,7B,80\n").encode()  # an invalid row, dropped


def test_the_stored_file_is_the_canonical_csv_of_the_rows_used(site_a):
    raw = _upload_csv()
    result = ingest_dataset(site_a, io.BytesIO(raw), name="ward.csv", policy=Policy.DROP_INVALID_ROWS)
    dataset = result.dataset
    assert result.ok and dataset.row_count == 60 and dataset.rows_dropped == 1

    with dataset.file.open("rb") as fh:
        stored = fh.read()
    lines = stored.decode().splitlines()
    assert lines[0] == ",".join(DEFAULT_SCHEMA.columns)  # the schema's order, nothing else
    assert len(lines) == 61 and all(line.count(",") == len(DEFAULT_SCHEMA.columns) - 1 for line in lines)
    assert b"MRN" not in stored and b"Patient" not in stored and b"7B" not in stored
    # The dataset's hash and size are the stored file's; workers verify them.
    assert dataset.sha256 == hashlib.sha256(stored).hexdigest() and dataset.size_bytes == len(stored)
    verify_dataset_file(dataset)
    # It reads back to exactly the arrays that were validated from the upload.
    original = validate_csv(raw, policy=Policy.DROP_INVALID_ROWS).data
    again = load_dataset_arrays(dataset)
    assert (again.X == original.X).all() and (again.y == original.y).all()

    report = dataset.validation_report
    assert report["columns_dropped"] == ["MRN", "Patient Name", "ward"]
    assert report["identifier_columns"] == ["MRN", "Patient Name"]
    messages = {w["column"]: w["message"] for w in report["warnings"]}
    assert "looks like a patient identifier" in messages["MRN"]
    assert "looks like a patient identifier" not in messages["ward"]


def test_no_download_page_or_api_response_carries_the_identifier(client, alice, charlie, client_for, make_experiment):
    client.force_login(alice)
    response = client.post(reverse("dataset_upload"), {
        "name": "ward.csv", "policy": "drop-invalid-rows",
        "file": SimpleUploadedFile("ward.csv", _upload_csv(), content_type="text/csv"),
    }, follow=True)
    dataset = Dataset.objects.get(site=alice.membership.site)
    page = response.content.decode()
    assert "looks like a patient identifier" in page  # the report calls it out to the site
    assert MRN not in page

    download = b"".join(client.get(reverse("dataset_download", args=[dataset.pk])).streaming_content)
    assert download.startswith(",".join(DEFAULT_SCHEMA.columns).encode()) and b"MRN" not in download
    for who in (alice, charlie):
        body = client_for(who).get(f"/api/v1/datasets/{dataset.pk}/").content.decode()
        assert MRN not in body and "Patient 3" not in body
    coordinator = client.__class__()
    coordinator.force_login(charlie)
    assert MRN not in coordinator.get(reverse("dataset_detail", args=[dataset.pk])).content.decode()
    experiment = make_experiment([dataset], name="ward study")
    for name in ("experiment_export_json", "experiment_export_metrics", "experiment_export_log",
                 "experiment_detail"):
        for viewer in (client, coordinator):
            body = viewer.get(reverse(name, args=[experiment.pk])).content.decode()
            assert MRN not in body and "Patient 3" not in body, name
