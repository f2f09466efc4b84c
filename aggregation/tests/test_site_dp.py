"""Site-level DP (DP-FedAvg) on the platform: the option at every door, the server's
clipping and noise at aggregation, each round's accounted figures and each version's
guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregation import services
from aggregation.models import ClientUpdate, Experiment, Round
from aggregation.policy import guarantee, guarantee_text, version_privacy
from aggregation.policy.viewer import COORDINATOR as COORDINATOR_ROLE
from aggregation.policy.viewer import Viewer
from aggregation.services import artifacts
from aggregation.services.creation import ExperimentInvalid, create_experiment
from aggregation.services.rounds import aggregate_round
from clients.tests import conftest as web
from fedhealth.ml.privacy import DP_TRAIN_DEFAULTS, site_epsilon
from fedhealth.ml.privacy.sitelevel import SiteDPSettings

from .test_creation_doors import doors  # noqa: F401  (the three doors fixture)

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db
COORDINATOR = Viewer(role=COORDINATOR_ROLE)
world = web.world


@pytest.fixture
def three(make_site, make_dataset):
    return [make_dataset(make_site(f"hosp-{i}"), rows=200, seed=i) for i in range(3)]


def test_a_site_level_experiment_is_stored_without_dp_sgd_defaults(three):
    experiment = create_experiment(name="site dp", datasets=three, dp_mode="site", dp_epsilon=8)
    assert experiment.dp_mode == "site" and experiment.privacy_settings is None  # no DP-SGD at the sites
    assert (experiment.batch_size, experiment.lr) != (DP_TRAIN_DEFAULTS["batch_size"], DP_TRAIN_DEFAULTS["lr"])
    settings = experiment.site_dp_settings(sites=3, per_round=3)
    assert (settings.epsilon, settings.delta, settings.clip_norm) == (8.0, 1e-5, 1.0)
    assert "each site's whole contribution" in guarantee(experiment)
    assert "large" in guarantee(experiment)


@pytest.mark.parametrize("door", ["web", "api", "admin"])
def test_too_few_sites_is_refused_at_every_door(doors, door):  # noqa: F811
    created, errors = doors[door]("dp_mode", "site")  # the doors' drafts have two sites
    assert not created
    assert "dp_mode" in errors, errors
    assert any("at least 3 sites" in str(m) for m in errors["dp_mode"]), errors


@pytest.mark.parametrize("door", ["web", "api", "admin"])
@pytest.mark.parametrize(("field", "value"), [("dp_epsilon", 0), ("dp_epsilon", -2), ("dp_clip_norm", 0)])
def test_bad_epsilon_or_clip_is_refused_naming_the_field(doors, door, field, value):  # noqa: F811
    created, errors = doors[door](field, value)
    assert not created and field in errors, errors


def test_the_service_names_each_bad_setting(three):
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="x", datasets=three, dp_mode="site", dp_delta=0.34, strategy="krum")
    errors = caught.value.errors
    assert errors["dp_delta"] == [
        "dp_delta must be below 1/sites = 0.33 with site-level DP (3 sites); got 0.34. Leave it empty for 1e-05."
    ]
    assert errors["strategy"] == ["site-level DP aggregates with DP-FedAvg: choose fedavg or fedprox, not krum."]
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="x", datasets=three[:2], dp_mode="site")
    assert caught.value.errors["dp_mode"][0].startswith("site-level DP needs at least 3 sites; 2 take part.")


def _norm(a, b) -> float:
    return math.sqrt(sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in a))


def test_an_attacker_site_moves_the_platform_model_by_at_most_clip_over_m_plus_noise(make_site, make_dataset, make_experiment):
    # Prepare: four hosted sites; three send the global model back unchanged, one an
    # enormous (but plausible, so not refused) update claiming all its rows.
    datasets = [make_dataset(make_site(f"s-{i}"), rows=200, seed=i) for i in range(4)]
    experiment = make_experiment(datasets, dp_mode="site", dp_epsilon=50.0, dp_clip_norm=0.5,
                                 num_rounds=2, min_sites=3)
    services.start_experiment(experiment.pk)
    round_ = Round.objects.get(experiment=experiment, number=1)
    previous, _ = artifacts.global_weights_for(round_)
    updates = list(round_.updates.select_related("site").order_by("site__slug"))
    for u in updates[:3]:
        services.submit_update(u.pk, previous, num_samples=150, loss=0.5, metrics={}, source="hosted")
    huge = {k: v + np.float32(900.0) for k, v in previous.items()}
    services.submit_update(updates[3].pk, huge, num_samples=150, loss=0.5, metrics={}, source="hosted")

    # Execute
    version = aggregate_round(round_.pk)

    # Assert: accepted (no outlier screening under site-level DP), clipped, noised.
    round_.refresh_from_db()
    figures = round_.metrics["site_dp"]
    assert sorted(round_.metrics["accepted"]) == [u.site.slug for u in updates]
    assert figures["denominator"] == 4 and figures["sample_rate"] == 1.0 and figures["sites"] == 4
    new = artifacts.load_weights(version.weights_file, version.sha256)
    d = sum(v.size for v in previous.values())
    z, clip, m = figures["noise_multiplier"], 0.5, 4
    noise_bound = 1.2 * z * clip * math.sqrt(d) / m  # chi with d >> 1 degrees: within 20%
    moved = _norm(new, previous)
    assert moved <= clip / m + noise_bound
    assert moved >= 0.5 * z * clip * math.sqrt(d) / m  # noise really added
    assert moved < 0.01 * 900 * math.sqrt(d) / 4  # plain FedAvg: 900 / 4 on every weight

    # The round's figures are Opacus's accountant's; the version states them.
    assert figures["epsilon"] == pytest.approx(site_epsilon(z, 1.0, 1, figures["delta"]))
    target = SiteDPSettings(epsilon=50.0, clip_norm=0.5, rounds=2, sites=4).noise_multiplier()
    assert z == pytest.approx(target)
    shown = version_privacy(COORDINATOR, [version])[version.pk]
    assert shown["scope"] == "each_site" and shown["epsilon"] == figures["epsilon"]
    assert "each site's whole contribution" in guarantee_text(shown)
    log = [e for e in artifacts.read_log(experiment) if e["event"] == "round_completed"]
    assert log[-1]["site_dp"]["epsilon"] == figures["epsilon"]


def test_the_experiment_epsilon_composes_its_rounds_up_to_the_target(make_site, make_dataset, make_experiment):
    datasets = [make_dataset(make_site(f"c-{i}"), rows=200, seed=i) for i in range(3)]
    experiment = make_experiment(datasets, dp_mode="site", dp_epsilon=20.0, num_rounds=2, min_sites=3)
    services.start_experiment(experiment.pk)
    for number in (1, 2):
        round_ = Round.objects.get(experiment=experiment, number=number)
        previous, _ = artifacts.global_weights_for(round_)
        for u in round_.updates.all():
            services.submit_update(u.pk, previous, num_samples=150, loss=0.5, metrics={}, source="hosted")
        aggregate_round(round_.pk)
    last = Round.objects.get(experiment=experiment, number=2).metrics["site_dp"]
    assert last["epsilon"] == pytest.approx(site_epsilon(last["noise_multiplier"], 1.0, 2, 1e-5))
    assert 0.9 * 20 <= last["epsilon"] <= 20
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.COMPLETED
    assert ClientUpdate.objects.filter(round__experiment=experiment, status="received").count() == 6


def test_site_level_dp_with_secure_aggregation_takes_agent_sites_when_every_site_is_selected(
    three, agent_site, remote_dataset
):
    remote = remote_dataset(agent_site, rows=200, seed=9)
    # An agent adds its noise share itself, checked at sampling rate 1: a selection of
    # fewer than every site (noise derived for q < 1) is one it would refuse.
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="x", datasets=[*three, remote], dp_mode="site", secure_aggregation=True,
                          fraction_fit=0.5, min_sites=2)
    assert caught.value.errors["fraction_fit"] == [
        f"site-level DP with secure aggregation and site agents ({agent_site.slug}) selects every "
        "site each round: an agent adds noise for sampling rate 1 (it cannot check the server's "
        "selection), and refuses the smaller noise of selecting 2 of 4. Set fraction_fit to 1."
    ]
    mixed = create_experiment(name="y", datasets=[*three, remote], dp_mode="site", secure_aggregation=True)
    assert mixed.secure_aggregation and mixed.dp_mode == "site"
    hosted = create_experiment(name="z", datasets=three, dp_mode="site", secure_aggregation=True,
                               fraction_fit=0.5, min_sites=2)
    assert hosted.fraction_fit == 0.5


def test_the_terms_a_site_accepts_state_the_site_level_figures(three):
    from aggregation.services.consent import terms

    experiment = create_experiment(name="t", datasets=three, dp_mode="site", dp_epsilon=12, dp_clip_norm=0.4)
    assert terms(experiment)["privacy"] == {"mode": "site", "epsilon": 12.0, "delta": None, "clip_norm": 0.4}


def test_with_fraction_fit_below_1_the_sites_are_chosen_secretly(make_site, make_dataset, make_experiment):
    from aggregation.services.lifecycle import select_sites

    datasets = [make_dataset(make_site(f"f-{i}"), rows=120, seed=i) for i in range(6)]
    seeded = make_experiment(datasets, fraction_fit=0.5, min_sites=3)
    secret = make_experiment(datasets, fraction_fit=0.5, min_sites=3, dp_mode="site")
    # A seeded draw can be replayed by anyone who knows the seed (no amplification by
    # sampling); site-level DP draws from the operating system: 20 possible choices of 3.
    assert len({tuple(s.slug for s in select_sites(seeded, 1)) for _ in range(6)}) == 1
    draws = [tuple(s.slug for s in select_sites(secret, 1)) for _ in range(6)]
    assert all(len(d) == 3 for d in draws) and len(set(draws)) > 1


def test_the_experiment_page_states_the_site_level_guarantee(client, make_user, three):
    from django.urls import reverse

    experiment = create_experiment(name="page", datasets=three, dp_mode="site", dp_epsilon=9)
    client.force_login(make_user("coord"))
    page = client.get(reverse("experiment_detail", args=[experiment.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "Privacy of each site&#x27;s contribution" in body or "Privacy of each site's contribution" in body
    assert "(9, 1e-05)-DP for each site" in body and 'id="chart-privacy"' not in body
