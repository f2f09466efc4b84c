"""Each site's epsilon per round, shown through the policy: the coordinator sees every
site's, a site its own, the same on the experiment page, live.json, the API and the log."""

from __future__ import annotations

import pytest
from django.urls import reverse

from aggregation import services
from aggregation.models import ClientUpdate
from aggregation.services import artifacts

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]


@pytest.fixture
def trained(site_a, site_b, make_dataset, make_experiment):
    """Two hosted sites trained round 1 of a private experiment."""
    datasets = [make_dataset(site_a, rows=300, seed=1), make_dataset(site_b, rows=400, seed=2)]
    experiment = make_experiment(datasets, num_rounds=2, batch_size=50, dp_mode="record", dp_epsilon=2.0)
    services.start_experiment(experiment.pk)
    for update in ClientUpdate.objects.filter(round__experiment=experiment, round__number=1):
        assert services.train_hosted_update(update.pk) == "submitted"
    return experiment


def sites_in(rows):
    return sorted({r["site"] for r in rows})


def test_live_json_scopes_each_sites_epsilon(client, trained, alice, charlie):
    url = reverse("experiment_live", args=[trained.pk])

    client.force_login(charlie)
    everyone = client.get(url).json()
    client.force_login(alice)
    own = client.get(url).json()

    assert sites_in(everyone["privacy"]) == ["site-a", "site-b"]
    assert sites_in(own["privacy"]) == ["site-a"]
    assert [t["name"] for t in own["figures"]["privacy"]["epsilon"]["data"]] == ["site-a"]
    assert len(everyone["figures"]["privacy"]["epsilon"]["data"]) == 2
    row = own["privacy"][0]
    assert row["round"] == 1 and 0 < row["epsilon"] <= 2.0 and row["noise_multiplier"] > 0
    # Different row counts, different noise: a site must not learn the other's.
    noises = {r["site"]: r["noise_multiplier"] for r in everyone["privacy"]}
    assert noises["site-a"] != noises["site-b"]
    assert str(noises["site-b"]) not in client.get(url).content.decode()


def test_the_page_shows_the_chart_and_the_guarantee(client, trained, alice):
    client.force_login(alice)
    page = client.get(reverse("experiment_detail", args=[trained.pk])).content.decode()
    assert 'data-figure="privacy.epsilon"' in page
    assert "(2, 1/(10 x rows))-DP for each patient at each site" in page
    assert "Privacy spent at your site" in page


def test_the_api_carries_the_same_rows(trained, alice, charlie, client_for):
    url = f"/api/v1/experiments/{trained.pk}/"
    everyone = client_for(charlie).get(url).json()["privacy"]
    own = client_for(alice).get(url).json()["privacy"]

    assert sites_in(everyone) == ["site-a", "site-b"] and sites_in(own) == ["site-a"]
    assert own == [r for r in everyone if r["site"] == "site-a"]


def test_the_log_records_every_sites_spend_for_the_coordinator(trained, alice, charlie, client_for):
    lines = [e for e in artifacts.read_log(trained) if e.get("event") == "privacy"]
    assert len(lines) == 1 and lines[0]["round"] == 1
    assert sorted(lines[0]["per_site"]) == ["site-a", "site-b"]
    assert all(v["epsilon"] > 0 and v["noise_multiplier"] > 0 for v in lines[0]["per_site"].values())
