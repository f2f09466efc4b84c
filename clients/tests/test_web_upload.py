"""Uploading a dataset from the browser: the report on failure, the summary on success."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from clients.models import Dataset
from fedhealth.ml.synthetic import generate_site

pytestmark = pytest.mark.django_db

HEADER = "heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
BAD = HEADER + "72,120,80,97,1\nabc,120,80,98,1\n70,30,80,98,0\n70,120,80,,1\n70,120,80,98,2\n71,118,79,96,0\n"


def csv_file(text: str, name: str = "vitals.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def good_csv(rows: int = 200) -> str:
    return generate_site(rows, seed=5).to_csv(index=False)


def stored_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
def upload(client, alice):
    client.force_login(alice)

    def post(text: str, *, policy: str = "reject", name: str = "Ward 7 vitals", follow: bool = False):
        data = {"name": name, "policy": policy, "file": csv_file(text)}
        return client.post(reverse("dataset_upload"), data, follow=follow)

    return post


def test_a_valid_file_is_stored_and_its_summary_shown(upload, alice, settings):
    response = upload(good_csv(), follow=True)

    dataset = Dataset.objects.get(site=alice.membership.site)
    assert dataset.status == Dataset.Status.READY and dataset.row_count == 200
    assert response.redirect_chain[-1][0] == reverse("dataset_detail", args=[dataset.pk])
    page = response.content.decode()
    assert "is ready: 200 rows" in page
    assert "Per-feature summary" in page and "heart_rate" in page
    assert len(stored_files(settings)) == 1


def test_an_invalid_file_gets_a_report_and_nothing_is_stored(upload, settings):
    response = upload(BAD)

    assert response.status_code == 200
    page = response.content.decode()
    assert "The file was not stored" in page
    report = response.context["report"]
    assert {c["label"]: c["count"] for c in report["counts"]} == {
        "Not a number": 1, "Empty value": 1, "Out of range": 1, "Invalid label": 1,
    }
    rows = {(p["label"], p["line"], p["column"], p["value"]) for p in report["problems"]}
    assert ("Not a number", 3, "heart_rate", "abc") in rows
    assert ("Out of range", 4, "systolic_bp", "30") in rows
    for cell in ("<code>abc</code>", "<code>systolic_bp</code>", "Invalid label"):
        assert cell in page
    assert stored_files(settings) == []
    assert not Dataset.objects.filter(status=Dataset.Status.READY).exists()
    # The form comes back filled in, ready for a corrected file.
    assert 'value="Ward 7 vitals"' in page


def test_drop_invalid_rows_keeps_the_valid_ones(upload):
    rows = good_csv(100).splitlines()
    text = "\n".join([*rows, "abc,120,80,98,1", "70,30,80,98,0"]) + "\n"

    response = upload(text, policy="drop-invalid-rows", follow=True)

    dataset = Dataset.objects.get()
    assert dataset.status == Dataset.Status.READY
    assert (dataset.row_count, dataset.rows_dropped) == (100, 2)
    assert "2 invalid rows dropped" in response.content.decode()


def test_a_file_over_the_limit_gets_a_clear_message_and_is_not_read(upload, settings):
    settings.FEDHEALTH_MAX_UPLOAD_BYTES = 1024

    response = upload(good_csv(200))

    assert response.status_code == 200
    [error] = response.context["form"].errors["file"]
    assert error.startswith("The file is larger than the 1.0\xa0KB limit.") and "Nothing was stored." in error
    assert not Dataset.objects.exists()
    assert stored_files(settings) == []
    assert 'value="Ward 7 vitals"' in response.content.decode()


def test_name_and_file_are_required(upload, client):
    response = client.post(reverse("dataset_upload"), {"policy": "reject"})

    assert set(response.context["form"].errors) == {"name", "file"}
    assert not Dataset.objects.exists()


def test_upload_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post(reverse("dataset_upload"), {"name": "x", "policy": "reject", "file": csv_file(good_csv())})

    assert response.status_code == 403
    assert not Dataset.objects.exists()


def test_upload_with_the_csrf_token_from_the_form_works(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    form = client.get(reverse("dataset_upload"))
    token = form.context["csrf_token"]

    response = client.post(reverse("dataset_upload"), {
        "csrfmiddlewaretoken": str(token), "name": "x", "policy": "reject", "file": csv_file(good_csv()),
    })

    assert response.status_code == 302
    assert Dataset.objects.get().status == Dataset.Status.READY


def test_coordinators_cannot_upload(client, charlie):
    client.force_login(charlie)

    response = client.post(reverse("dataset_upload"), {"name": "x", "policy": "reject", "file": csv_file(good_csv())})

    assert response.status_code == 403
    assert not Dataset.objects.exists()
