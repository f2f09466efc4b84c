"""Datasets over the API: summaries in scope, multipart upload with the validation report."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clients.models import Dataset
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/datasets/"


def upload(client, data: bytes, **fields):
    return client.post(
        URL,
        {"file": SimpleUploadedFile("vitals.csv", data, "text/csv"), **fields},
        format="multipart",
    )


@pytest.fixture
def two_datasets(site_a, site_b, make_dataset):
    return make_dataset(site_a, rows=120, seed=1), make_dataset(site_b, rows=120, seed=2)


def test_no_token_is_401(anon, two_datasets, csv_bytes):
    ds_a, _ = two_datasets
    assert anon.get(URL).status_code == 401
    assert anon.get(f"{URL}{ds_a.pk}/").status_code == 401
    assert upload(anon, csv_bytes()).status_code == 401


@pytest.mark.parametrize("who, sees", [("alice", {"a"}), ("bob", {"b"}), ("charlie", {"a", "b"})])
def test_list_is_scoped(personas, two_datasets, who, sees):
    ids = {"a": two_datasets[0].pk, "b": two_datasets[1].pk}

    body = personas[who].get(URL).json()

    assert {d["id"] for d in body["results"]} == {ids[x] for x in sees}


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_detail_of_another_sites_dataset_is_404(personas, two_datasets, who, status):
    response = personas[who].get(f"{URL}{two_datasets[0].pk}/")

    assert response.status_code == status


def test_detail_is_a_summary_without_rows(personas, two_datasets):
    body = personas["alice"].get(f"{URL}{two_datasets[0].pk}/").json()

    assert body["row_count"] == 120 and 0 < body["label_balance"] < 1 and body["hosted"] is True
    assert set(body["stats"]) == {"count", "sum", "sumsq"}
    assert set(body["summary"]["heart_rate"]) == {"unit", "mean", "std", "min", "max"}
    assert "file" not in body


def test_filters(personas, two_datasets, site_b):
    charlie = personas["charlie"]

    assert {d["site"] for d in charlie.get(URL, {"site": site_b.slug}).json()["results"]} == {
        site_b.slug
    }
    assert charlie.get(URL, {"status": "rejected"}).json()["count"] == 0
    assert "site" in error_fields(charlie.get(URL, {"site": "not a slug!"}))


def test_a_member_uploads_a_csv_and_gets_the_report(personas, site_a, csv_bytes):
    response = upload(personas["alice"], csv_bytes(150), name="march")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["site"] == site_a.slug and body["status"] == "ready" and body["name"] == "march"
    assert body["report"]["ok"] is True and body["report"]["rows_valid"] == 150
    assert Dataset.objects.get(pk=body["id"]).file


def test_an_invalid_csv_is_400_with_field_errors_and_the_report(personas, csv_bytes):
    bad = csv_bytes(50).replace(b"\n", b"\nabc,", 1)

    response = upload(personas["alice"], bad)

    assert response.status_code == 400
    errors = error_fields(response)
    body = response.json()
    assert errors["file"] and body["report"]["ok"] is False and body["report"]["problems"]
    assert Dataset.objects.get(pk=body["dataset"]).status == "rejected"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"policy": "ignore-everything"}, "policy"),
        ({"schema": "{not json"}, "schema"),
        ({"schema": json.dumps({"features": []})}, "schema"),
    ],
)
def test_bad_form_fields_are_400(personas, csv_bytes, fields, field):
    response = upload(personas["alice"], csv_bytes(), **fields)

    assert response.status_code == 400 and field in error_fields(response)


def test_missing_file_is_400(personas):
    response = personas["alice"].post(URL, {"name": "x"}, format="multipart")

    assert response.status_code == 400 and "file" in error_fields(response)


def test_coordinators_cannot_upload_rows(personas, csv_bytes):
    assert upload(personas["charlie"], csv_bytes()).status_code == 403


def test_an_agent_mode_site_never_uploads_rows(agent_site, make_user, client_for, csv_bytes):
    member = client_for(make_user("dora", agent_site))

    response = upload(member, csv_bytes())

    assert response.status_code == 403 and "agent" in response.json()["detail"]
    assert not Dataset.objects.filter(site=agent_site).exists()


def test_a_hosted_sites_token_may_upload(site_a, client_for, csv_bytes):
    assert upload(client_for(site_a), csv_bytes()).status_code == 201


def test_datasets_cannot_be_changed_and_a_member_cannot_delete(personas, two_datasets):
    url = f"{URL}{two_datasets[0].pk}/"
    assert personas["alice"].patch(url, {"name": "x"}).status_code == 405
    # Deleting is a site admin's (test_api_dataset_deletion.py).
    assert personas["alice"].delete(url).status_code == 403


def test_only_the_owning_site_sees_the_reports_quoted_cells(personas, csv_bytes):
    lines = csv_bytes(50).split(b"\n")
    lines[1] = b",".join([b"SECRET-CELL", *lines[1].split(b",")[1:]])
    bad = b"\n".join(lines)
    dataset = upload(personas["alice"], bad).json()["dataset"]

    own = personas["alice"].get(f"{URL}{dataset}/").json()["validation_report"]
    coordinator = personas["charlie"].get(f"{URL}{dataset}/").json()["validation_report"]

    assert "SECRET-CELL" in str(own["problems"])
    assert "SECRET-CELL" not in str(coordinator) and coordinator["counts"] and coordinator["ok"] is False
