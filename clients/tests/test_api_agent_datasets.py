"""POST /api/v1/agent/datasets/: an agent registers its dataset's summary, never rows."""

from __future__ import annotations

import copy

import pytest

from clients.models import Dataset
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/agent/datasets/"


@pytest.fixture
def payload(csv_bytes, summary_of):
    return summary_of(csv_bytes(160, seed=3))


def test_registration_creates_a_ready_dataset_without_a_file(agent, agent_site, payload):
    response = agent.post(URL, payload)

    assert response.status_code == 201, response.json()
    ds = Dataset.objects.get(pk=response.json()["id"])
    assert ds.site == agent_site and ds.status == "ready" and not ds.file
    assert ds.row_count == 160 and ds.stats["count"] == 160 and response.json()["hosted"] is False


def test_an_agent_whose_rows_all_carry_one_label_registers(agent, summary_of):
    # A referral centre: every patient unhealthy (healthy = 0). Its agent validates the
    # CSV (a warning, not a refusal) and the server registers the summary.
    from fedhealth.ml.synthetic import generate_site

    pool = generate_site(300, seed=5, healthy_fraction=0.2)
    body = summary_of(pool[pool.healthy == 0].head(30).to_csv(index=False).encode())

    response = agent.post(URL, body)

    assert response.status_code == 201, response.json()
    ds = Dataset.objects.get(pk=response.json()["id"])
    assert (ds.row_count, ds.positive_count) == (30, 0)


def test_registering_the_same_summary_again_is_idempotent(agent, payload):
    first = agent.post(URL, payload)
    again = agent.post(URL, payload)

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Dataset.objects.count() == 1


def test_no_token_is_401(anon, payload):
    assert anon.post(URL, payload).status_code == 401


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
def test_people_cannot_use_agent_endpoints(personas, payload, who):
    assert personas[who].post(URL, payload).status_code == 403


def test_a_hosted_sites_token_is_refused_with_a_clear_message(site_a, client_for, payload):
    response = client_for(site_a).post(URL, payload)

    assert response.status_code == 403 and "hosted" in response.json()["detail"]


def test_a_deactivated_agent_site_is_refused(agent, agent_site, payload):
    agent_site.is_active = False
    agent_site.save()

    assert agent.post(URL, payload).status_code == 403


def _mutate(payload, path, value):
    out = copy.deepcopy(payload)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    "path, value, field",
    [
        (["stats", "sum"], [1.0, 2.0], "stats"),  # wrong number of features
        (["stats", "sumsq"], [[1.0]] * 4, "stats"),  # not a vector
        (["stats", "count"], 3, "stats"),  # count != row_count
        (["stats", "sumsq"], [0.0, 0.0, 0.0, 0.0], "stats"),  # sumsq < sum^2 / n: not real data
        (["stats", "sum"], ["nan", 1.0, 1.0, 1.0], "stats.sum.0"),  # not finite
        (["stats"], KeyError, "stats"),
        (["row_count"], -1, "row_count"),
        (["positive_count"], -1, "positive_count"),  # negative
        (["positive_count"], 10_000, "positive_count"),
        (["schema"], {"features": [{"name": "x", "maximum": 3}]}, "schema"),
        (["schema"], "vitals", "schema"),
        (["summary", "spo2"], KeyError, "summary"),
        (["summary", "spo2", "std"], -1.0, "summary"),
        (["summary", "spo2", "mean"], 1000.0, "summary"),  # mean outside [min, max]
        (["summary", "rows"], {"unit": "", "mean": 1, "std": 0, "min": 1, "max": 1}, "summary"),
    ],
)
def test_malformed_summaries_are_400_naming_the_field(agent, payload, path, value, field):
    response = agent.post(URL, _mutate(payload, path, value))

    assert response.status_code == 400, response.json()
    errors = error_fields(response)
    assert any(k == field or k.startswith(f"{field}.") for k in errors), errors
    assert not Dataset.objects.exists()


def test_nul_characters_are_refused(agent, payload):
    payload["schema"]["features"][0]["unit"] = "bpm\x00"

    assert agent.post(URL, payload).status_code == 400
