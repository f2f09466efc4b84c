"""GET /api/v1/rounds/: rounds of the experiments in the caller's scope."""

from __future__ import annotations

import pytest

from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/rounds/"


def test_no_token_is_401(anon, study):
    rid = study["done"].rounds.first().pk
    assert anon.get(URL).status_code == 401 and anon.get(f"{URL}{rid}/").status_code == 401


@pytest.mark.parametrize("who, count", [("alice", 2), ("bob", 0), ("charlie", 2)])
def test_list_is_scoped(personas, study, who, count):
    assert personas[who].get(URL).json()["count"] == count


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_another_sites_round_is_404(personas, study, who, status):
    assert personas[who].get(f"{URL}{study['done'].rounds.first().pk}/").status_code == status


def test_detail_and_filters(personas, study):
    charlie, done = personas["charlie"], study["done"]
    first = done.rounds.get(number=1)

    body = charlie.get(f"{URL}{first.pk}/").json()
    assert body["status"] == "completed" and body["experiment"] == done.pk
    assert body["model_version"] == first.model_version.pk and body["metrics"]["num_samples"] > 0
    assert charlie.get(URL, {"experiment": done.pk, "status": "completed"}).json()["count"] == 2
    assert charlie.get(URL, {"experiment": study["draft"].pk}).json()["count"] == 0
    assert "experiment" in error_fields(charlie.get(URL, {"experiment": "-3"}))
    assert "status" in error_fields(charlie.get(URL, {"status": "x"}))
