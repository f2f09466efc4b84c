"""Each model version's formal guarantee: a site sees its own (epsilon, delta) reached by
that round, the coordinator the worst case over the sites (never which site), the same on
the model page, the API and in the downloaded file's metadata."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from django.urls import reverse

from aggregation import services
from aggregation.models import ClientUpdate, ModelVersion, PrivacyLedgerEntry
from fedhealth.ml.privacy import composed_epsilon
from fedhealth.ml.weights_io import read_metadata, weights_from_bytes

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]


@pytest.fixture
def private(site_a, site_b, make_dataset, make_experiment):
    """Two hosted sites of different sizes trained two rounds of a private experiment."""
    datasets = [make_dataset(site_a, rows=300, seed=1), make_dataset(site_b, rows=500, seed=2)]
    experiment = make_experiment(
        datasets, num_rounds=2, local_epochs=1, batch_size=50, dp_mode="record", dp_epsilon=2.0
    )
    services.start_experiment(experiment.pk)
    for number in (1, 2):
        updates = ClientUpdate.objects.filter(round__experiment=experiment, round__number=number)
        for update in updates:
            assert services.train_hosted_update(update.pk) == "submitted"
        services.aggregate_round(updates[0].round_id)
    return experiment


def own_figure(site, number):
    spends = [
        e.spend()
        for e in PrivacyLedgerEntry.objects.filter(dataset__site=site, round_number__lte=number)
    ]
    return composed_epsilon(spends), max(s.delta for s in spends)


def api_privacy(client, experiment):
    rows = client.get("/api/v1/models/", {"experiment": experiment.pk}).json()["results"]
    return {r["version"]: r["privacy"] for r in rows}


def test_a_site_sees_its_own_guarantee_per_version_and_nothing_of_the_other(
    private, site_a, site_b, alice, client_for
):
    shown = api_privacy(client_for(alice), private)

    for number in (1, 2):
        epsilon, delta = own_figure(site_a, number)
        assert shown[number]["scope"] == "own_site" and shown[number]["accounted"] is True
        assert shown[number]["epsilon"] == pytest.approx(epsilon, rel=1e-12)
        assert shown[number]["delta"] == delta
    # Round 2 composes round 1: the guarantee weakens as rounds go by, up to the target.
    assert shown[1]["epsilon"] < shown[2]["epsilon"] <= 2.0
    other = own_figure(site_b, 2)[0]
    assert other != shown[2]["epsilon"]
    assert "site-b" not in json.dumps(shown) and f"{other:.3f}" not in json.dumps(shown)


def test_the_coordinator_sees_the_worst_case_over_sites_without_names(
    private, site_a, site_b, charlie, client_for
):
    shown = api_privacy(client_for(charlie), private)

    worst = max(own_figure(site_a, 2)[0], own_figure(site_b, 2)[0])
    assert shown[2]["scope"] == "worst_site" and shown[2]["sites"] == 2
    assert shown[2]["epsilon"] == pytest.approx(worst, rel=1e-12)
    assert shown[2]["unaccounted_sites"] == 0
    assert "site" not in {k for k in shown[2]} and "site-a" not in json.dumps(shown)


def test_the_model_page_states_each_versions_guarantee(client, private, site_a, alice, charlie):
    url = reverse("model_list", args=[private.pk])
    client.force_login(alice)
    page = client.get(url).content.decode()
    epsilon, delta = own_figure(site_a, 2)
    assert "Privacy guarantee" in page
    assert (
        f"({epsilon:.3g}, {delta:.2g})-DP for each patient at your site, rounds 1-2 composed."
        in page
    )

    client.force_login(charlie)
    page = client.get(url).content.decode()
    assert "at each site: the worst case over 2 sites, rounds 1-2 composed." in page


def test_the_download_carries_the_viewers_guarantee_and_the_same_weights(
    client, private, site_a, alice
):
    version = ModelVersion.objects.get(experiment=private, version=2)
    client.force_login(alice)
    response = client.get(reverse("model_download", args=[version.pk]))

    assert response.status_code == 200
    data = response.content
    assert response["X-Checksum-SHA256"] == hashlib.sha256(data).hexdigest() != version.sha256
    assert response["X-Stored-SHA256"] == version.sha256
    meta = read_metadata(data)
    figures = json.loads(meta["fedhealth.privacy"])
    assert figures["scope"] == "own_site"
    assert figures["epsilon"] == pytest.approx(own_figure(site_a, 2)[0], rel=1e-12)
    assert "at your site" in meta["fedhealth.privacy_guarantee"]
    assert meta["fedhealth.stored_sha256"] == version.sha256
    stored = services.artifacts.load_weights(version.weights_file, version.sha256)
    served = weights_from_bytes(data)
    assert list(served) == list(stored)
    for name in stored:
        np.testing.assert_array_equal(served[name], stored[name])


def test_an_update_sent_without_a_recorded_spend_is_not_covered(
    private, site_b, bob, charlie, client_for
):
    PrivacyLedgerEntry.objects.filter(dataset__site=site_b).delete()

    everyone = api_privacy(client_for(charlie), private)[2]
    own = api_privacy(client_for(bob), private)[2]

    assert everyone["sites"] == 1 and everyone["unaccounted_sites"] == 1
    assert own["epsilon"] is None and own["accounted"] is False


def test_a_version_without_dp_has_no_guarantee(
    site_a, make_dataset, make_experiment, charlie, client_for
):
    experiment = make_experiment(
        [make_dataset(site_a, rows=200, seed=3)], num_rounds=1, local_epochs=1
    )
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.get(round__experiment=experiment)
    services.train_hosted_update(update.pk)
    services.aggregate_round(update.round_id)

    assert api_privacy(client_for(charlie), experiment) == {1: None}
