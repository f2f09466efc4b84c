"""Predictions from the browser: one patient by form, or a CSV of them."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from clients.tests import conftest as web

pytestmark = pytest.mark.django_db
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world

PATIENT = {"heart_rate": "72", "systolic_bp": "118", "diastolic_bp": "76", "spo2": "98"}


def single(client, world, **values):
    return client.post(reverse("predict"), {"mode": "single", "version": world.version.pk, **(PATIENT | values)})


def batch(client, world, text: str, output: str = "page"):
    upload = SimpleUploadedFile("patients.csv", text.encode(), content_type="text/csv")
    return client.post(reverse("predict"), {"mode": "csv", "csv-version": world.version.pk, "csv-file": upload,
                                            "output": output})


@pytest.fixture
def signed_in(client, world):
    client.force_login(world.bob)
    return client


def test_the_form_defaults_to_the_newest_visible_version(signed_in, world):
    response = signed_in.get(reverse("predict"))

    assert response.context["version"] == world.version
    assert list(response.context["form"].fields["version"].queryset) == [world.version, world.version.round.experiment.versions.get(version=1)]


def test_one_patient_gets_a_probability_and_a_label(signed_in, world):
    response = single(signed_in, world)

    result = response.context["single"]
    assert 0.0 <= result["probability"] <= 1.0 and result["label"] in (0, 1)
    assert result["outcome"] in ("Healthy", "Not healthy")
    assert result["percent"] in response.content.decode()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("heart_rate", "301", "heart_rate must be between 20 and 300 bpm (hard limits), got 301"),
    ("spo2", "ninety", "spo2 must be a number, got 'ninety'"),
    ("systolic_bp", "", "systolic_bp is required"),
])
def test_bad_input_gets_an_error_on_its_field(signed_in, world, field, value, message):
    response = single(signed_in, world, **{field: value})

    form = response.context["form"]
    assert form.errors[field] == [message]
    assert "single" not in response.context
    assert message.replace("'", "&#x27;") in response.content.decode()


def test_a_csv_of_patients_gets_a_table_of_results(signed_in, world):
    text = "patient_id,heart_rate,systolic_bp,diastolic_bp,spo2\nP1,72,118,76,98\nP2,110,150,95,91\n"

    response = batch(signed_in, world, text)

    result = response.context["batch"]
    assert result["total"] == 2 and [r["line"] for r in result["rows"]] == [2, 3]
    assert "Results: 2 patients" in response.content.decode()


def test_a_csv_with_bad_values_lists_each_one_and_predicts_nothing(signed_in, world):
    text = "heart_rate,systolic_bp,diastolic_bp,spo2\n72,118,76,98\n72,118,,98\n500,118,76,98\n"

    response = batch(signed_in, world, text)

    errors = response.context["csv_errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(3, "diastolic_bp"), (4, "heart_rate")]
    assert "batch" not in response.context
    assert "2 values need fixing; nothing was predicted." in response.content.decode()


def test_results_download_as_csv_with_the_original_columns(signed_in, world):
    text = "patient_id,heart_rate,systolic_bp,diastolic_bp,spo2\nP1,72,118,76,98\n"

    response = batch(signed_in, world, text, output="download")

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    [row] = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert row["patient_id"] == "P1" and 0 <= float(row["probability_healthy"]) <= 1
    assert row["predicted_healthy"] in ("0", "1")


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"", "The submitted file is empty."),
    (b"heart_rate,spo2\n1,2,3\n", "more values than the header"),
])
def test_unreadable_csv_files_are_explained(signed_in, world, content, message):
    upload = SimpleUploadedFile("p.csv", content, content_type="text/csv")

    response = signed_in.post(reverse("predict"), {"mode": "csv", "csv-version": world.version.pk, "csv-file": upload})

    assert any(message in e for e in response.context["csv_form"].errors["file"])


def test_a_csv_over_the_limit_is_refused_clearly(signed_in, world, settings):
    settings.FEDHEALTH_MAX_PREDICT_BYTES = 100

    response = batch(signed_in, world, "heart_rate,systolic_bp,diastolic_bp,spo2\n" + "72,118,76,98\n" * 20)

    [error] = response.context["csv_form"].errors["file"]
    assert error.startswith("The file is larger than the 100\xa0bytes limit")


def test_a_user_without_models_is_told_so(client, make_site, make_user):
    client.force_login(make_user("erin", make_site("elmwood")))

    assert "No model is available to you yet" in client.get(reverse("predict")).content.decode()
