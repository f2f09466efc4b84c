"""POST /api/v1/models/{id}/predict/: probabilities and labels, per-field errors."""

from __future__ import annotations

import pytest

from aggregation.services.predict import predict_records
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

HEALTHY = {"heart_rate": 72, "systolic_bp": 118, "diastolic_bp": 76, "spo2": 98}
UNWELL = {"heart_rate": 118, "systolic_bp": 158, "diastolic_bp": 99, "spo2": 91}


@pytest.fixture
def url(study):
    return f"/api/v1/models/{study['done'].versions.get(version=2).pk}/predict/"


def test_no_token_is_401(anon, url):
    assert anon.post(url, {"record": HEALTHY}).status_code == 401


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_only_callers_who_see_the_model_may_predict(personas, url, who, status):
    assert personas[who].post(url, {"record": HEALTHY}).status_code == status


def test_one_record(personas, url, study):
    body = personas["alice"].post(url, {"record": HEALTHY}).json()

    expected = predict_records(study["done"].versions.get(version=2), [HEALTHY])
    assert body["probabilities"] == pytest.approx(expected.probabilities)
    assert body["labels"] == expected.labels and body["version"] == 2 and body["threshold"] == 0.5


def test_a_batch_with_extra_fields_and_numeric_strings(personas, url):
    records = [HEALTHY, UNWELL, {**HEALTHY, "patient_ref": "x-17", "spo2": "97.5"}]

    body = personas["charlie"].post(url, {"records": records}).json()

    assert len(body["probabilities"]) == len(body["labels"]) == 3
    assert all(0 <= p <= 1 for p in body["probabilities"]) and set(body["labels"]) <= {0, 1}


def test_per_field_errors_name_the_record_and_field(personas, url):
    records = [
        HEALTHY,
        {**HEALTHY, "spo2": 140},
        {"heart_rate": "fast", "systolic_bp": 120, "diastolic_bp": 80},
    ]

    response = personas["alice"].post(url, {"records": records})

    assert response.status_code == 400
    errors = error_fields(response)
    assert set(errors) == {"records.1.spo2", "records.2.heart_rate", "records.2.spo2"}
    assert "between 50 and 100 % (hard limits)" in errors["records.1.spo2"][0]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "records"),
        ({"record": HEALTHY, "records": [HEALTHY]}, "records"),
        ({"records": []}, "records"),
        ({"records": "all"}, "records"),
        ({"records": [1, 2]}, "records.0"),
        ({"record": {"heart_rate": None}}, "record.heart_rate"),
    ],
)
def test_bad_payloads_are_400(personas, url, payload, field):
    response = personas["alice"].post(url, payload)

    assert response.status_code == 400
    assert field in error_fields(response), response.json()
