"""Secure aggregation at every door (form, API, admin) and on the experiment page and the API:
each site's phase to the coordinator, a site's own to that site."""

from __future__ import annotations

import pytest
from django.urls import reverse

from aggregation import services
from aggregation.models import Experiment, Round
from aggregation.reasons import Reason
from aggregation.services.creation import create_experiment
from clients.tests import conftest as web
from clients.tests.api_support import error_fields
from tests.consent_support import accept_invitations

from .test_creation_doors import API, doors  # noqa: F401  (the three doors fixture)
from .test_secure_round import drive_secure  # noqa: F401  (the in-process secure loop)
from .test_web_experiments import form_data

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world


@pytest.mark.parametrize(("door", "on"), [("web", "on"), ("api", True), ("admin", "on")])
def test_a_secure_experiment_is_stored_at_every_door(doors, door, on):  # noqa: F811
    created, errors = doors[door]("secure_aggregation", on)
    assert created, errors
    experiment = Experiment.objects.latest("created_at")
    assert experiment.secure_aggregation and experiment.secagg_threshold is None


@pytest.mark.parametrize("door", ["web", "api", "admin"])
def test_a_threshold_without_secure_aggregation_or_out_of_range_is_refused(doors, door):  # noqa: F811
    created, errors = doors[door]("secagg_threshold", 2)
    assert not created and "secagg_threshold" in errors, errors


def test_a_robust_strategy_is_refused_with_secure_aggregation_saying_why(client, world, client_for):
    client.force_login(world.charlie)
    response = client.post(reverse("experiment_create"), form_data(world, name="median", strategy="fedmedian",
                                                                   secure_aggregation="on"))
    assert not Experiment.objects.filter(name="median").exists()
    assert any("only their sum" in m for m in response.context["form"].errors["strategy"])
    response = client_for(world.charlie).post(API, {"name": "median", "datasets": [world.ds_a.pk, world.ds_b.pk],
                                                    "strategy": "trimmed_mean", "secure_aggregation": True})
    assert response.status_code == 400
    assert any("needs each site's update" in m for m in error_fields(response)["strategy"])


def test_the_form_explains_the_option(client, world):
    client.force_login(world.charlie)
    page = client.get(reverse("experiment_create")).content.decode()
    assert "Secure aggregation" in page and "The server learns only the sum of the sites" in page
    assert "a majority of the sites, at least 2" in page


def test_each_sites_phase_to_the_coordinator_and_its_own_to_a_site(world, client, client_for, drive_secure):  # noqa: F811
    experiment = create_experiment(name="secure", datasets=[world.ds_a, world.ds_b], num_rounds=1,
                                   secure_aggregation=True, min_sites=2)
    accept_invitations(experiment.pk)
    services.start_experiment(experiment.pk)
    drive_secure(experiment.pk, silent={world.site_b.slug: "masked"})
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.failure_code == Reason.SECAGG_THRESHOLD  # two sites, threshold 2: fails closed

    coordinator = client_for(world.charlie).get(f"/api/v1/rounds/{round_.pk}/").json()
    assert coordinator["secure"]["phase"] == "failed" and coordinator["secure"]["dropped"] == 1
    assert {(s["site"], s["status"]) for s in coordinator["secure"]["sites"]} == {
        (world.site_a.slug, "active"), (world.site_b.slug, "dropped")}
    own = client_for(world.alice).get(f"/api/v1/rounds/{round_.pk}/").json()
    assert [s["site"] for s in own["secure"]["sites"]] == [world.site_a.slug]
    assert "dropped" not in own["secure"]
    assert world.site_b.slug not in str(own)
    assert "failed closed" in own["failure_reason"]

    client.force_login(world.charlie)
    live = client.get(reverse("experiment_live", args=[experiment.pk])).json()["html"]["rounds"]
    assert "Secure aggregation" in live and "1 dropped" in live
    assert f"{world.site_b.slug}: dropped while sending masked updates" in live
    client.force_login(world.alice)
    live = client.get(reverse("experiment_live", args=[experiment.pk])).json()["html"]["rounds"]
    assert f"{world.site_a.slug}: masked update sent" in live and world.site_b.slug not in live
