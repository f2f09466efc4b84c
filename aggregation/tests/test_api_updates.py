"""GET /api/v1/updates/: a site sees its own updates; coordinators every site's."""

from __future__ import annotations

import pytest

from aggregation import services
from aggregation.models import ClientUpdate
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/updates/"


@pytest.fixture
def running(study):
    services.start_experiment(study["draft"].pk)  # round 1: one pending update per site
    return study


def test_no_token_is_401(anon, running):
    assert anon.get(URL).status_code == 401
    assert anon.get(f"{URL}{ClientUpdate.objects.first().pk}/").status_code == 401


@pytest.mark.parametrize("who, count", [("alice", 3), ("bob", 1), ("charlie", 4)])
def test_list_is_scoped_to_the_callers_site(personas, running, who, count):
    body = personas[who].get(URL).json()

    assert body["count"] == count


@pytest.mark.parametrize("who, status", [("alice", 404), ("bob", 200), ("charlie", 200)])
def test_another_sites_update_is_404(personas, running, site_b, who, status):
    update = ClientUpdate.objects.get(site=site_b)

    assert personas[who].get(f"{URL}{update.pk}/").status_code == status


def test_detail_and_filters(personas, running, site_a):
    charlie = personas["charlie"]
    received = ClientUpdate.objects.filter(status="received").first()

    body = charlie.get(f"{URL}{received.pk}/").json()
    assert body["site"] == site_a.slug and body["num_samples"] > 0 and "accuracy" in body["metrics"]
    assert len(body["sha256"]) == 64 and body["source"] == "hosted"
    assert charlie.get(URL, {"status": "pending"}).json()["count"] == 2
    assert (
        charlie.get(URL, {"experiment": running["done"].pk, "site": site_a.slug}).json()["count"]
        == 2
    )
    assert charlie.get(URL, {"round": received.round_id}).json()["count"] == 1
    assert "round" in error_fields(charlie.get(URL, {"round": "first"}))
