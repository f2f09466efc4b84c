"""A server that trusts no single site: the attacks of issue 8, each as a test.

An update's sample count is bounded by the site's rows; an implausible or outlying update
is refused with its reason; a corrupted or deleted update cannot push a round under its
quorum; a version with non-finite weights can never be created.
"""

import numpy as np
import pytest
from django.core.files.storage import default_storage

from aggregation import services
from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.reasons import Reason
from aggregation.services import artifacts
from aggregation.services.rounds import UpdateRefused, publishable
from fedhealth.ml.weights_io import sha256_hex, weights_to_bytes

from .test_api_agent import API, trained, upload

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

ATTACK_VALUE = 3e38  # finite in float32; times 2^31 it overflows float32 (not float64)
ATTACK_COUNT = 2**31 - 1


@pytest.fixture
def mixed(site_a, agent_site, make_dataset, make_experiment, remote_dataset):
    """Hosted site A and the agent site, round 1 open, both required."""
    remote = remote_dataset(agent_site, rows=160, seed=5)
    experiment = make_experiment([make_dataset(site_a, rows=160, seed=4), remote], min_sites=2, num_rounds=2)
    services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    round_ = experiment.rounds.get(number=1)
    return {"experiment": experiment, "round": round_, "remote": remote,
            "update": ClientUpdate.objects.get(round=round_, site=agent_site)}


def attack_weights(experiment):
    return {k: np.full_like(v, ATTACK_VALUE) for k, v in trained(experiment).items()}


def test_an_inflated_sample_count_is_refused_at_the_api(agent, mixed):
    data = weights_to_bytes(trained(mixed["experiment"]))

    response = upload(agent, mixed["round"].pk, data, num_samples=ATTACK_COUNT)

    assert response.status_code == 400, response.json()
    body = response.json()
    assert "num_samples" in str(body) and "160 rows" in str(body)
    assert ClientUpdate.objects.get(pk=mixed["update"].pk).status == "pending"


def test_implausible_weights_are_refused_at_the_api(agent, mixed):
    data = weights_to_bytes(attack_weights(mixed["experiment"]))

    response = upload(agent, mixed["round"].pk, data, num_samples=100)

    assert response.status_code == 400, response.json()
    assert ClientUpdate.objects.get(pk=mixed["update"].pk).status == "pending"


def test_the_sample_count_bound_is_the_sites_own_rows(mixed):
    update = mixed["update"]
    weights = trained(mixed["experiment"])

    with pytest.raises(UpdateRefused) as refused:
        services.submit_update(update.pk, weights, num_samples=161, loss=0.5, metrics={}, source="agent")
    assert refused.value.code == Reason.SAMPLE_COUNT and refused.value.bad_input

    accepted = services.submit_update(update.pk, weights, num_samples=160, loss=0.5, metrics={}, source="agent")
    assert accepted.update.status == ClientUpdate.Status.RECEIVED


@pytest.fixture
def four_hosted(make_site, make_dataset):
    return [make_dataset(make_site(f"site-{i}"), rows=200, seed=i) for i in range(4)]


def train_round(experiment, number: int) -> Round:
    round_ = experiment.rounds.get(number=number)
    for update in round_.updates.filter(status=ClientUpdate.Status.PENDING):
        services.train_hosted_update(update.pk)
    round_.refresh_from_db()
    return round_


def replace_stored_update(update: ClientUpdate, weights) -> None:
    """What a compromised site could have sent, written where its update lives (the
    checksum updated too, so only the content is wrong)."""
    data = weights_to_bytes(weights)
    with default_storage.open(update.weights_file, "wb") as fh:
        fh.write(data)
    ClientUpdate.objects.filter(pk=update.pk).update(sha256=sha256_hex(data))


def test_an_outlying_update_is_refused_with_its_reason(four_hosted, make_experiment):
    experiment = make_experiment(four_hosted, num_rounds=2, min_sites=3)
    services.start_experiment(experiment.pk)
    round_ = train_round(experiment, 1)
    assert round_.status == Round.Status.AGGREGATING
    previous, _ = artifacts.global_weights_for(round_)
    victim = round_.updates.get(site__slug="site-3")
    honest = artifacts.load_weights(victim.weights_file, victim.sha256)
    # Plausible magnitudes, but 1000x farther from the global model than an honest update.
    replace_stored_update(victim, {k: (previous[k] + 1000 * (honest[k] - previous[k])).astype(np.float32)
                                   for k in previous})

    version = services.aggregate_round(round_.pk)

    round_.refresh_from_db()
    assert version is not None and round_.status == Round.Status.COMPLETED
    assert sorted(round_.metrics["accepted"]) == ["site-0", "site-1", "site-2"]
    [rejected] = round_.metrics["rejected"]
    assert rejected["site"] == "site-3" and rejected["code"] == Reason.OUTLIER
    assert "/" not in rejected["reason"]  # product text, no paths
    weights = artifacts.load_weights(version.weights_file, version.sha256)
    assert publishable(weights)


@pytest.mark.parametrize("damage", ["deleted", "flipped byte"])
def test_an_unreadable_update_cannot_push_a_round_under_its_quorum(four_hosted, make_experiment, damage):
    experiment = make_experiment(four_hosted[:3], num_rounds=2, min_sites=3)
    services.start_experiment(experiment.pk)
    round_ = train_round(experiment, 1)
    assert round_.status == Round.Status.AGGREGATING
    target = round_.updates.get(site__slug="site-1")
    if damage == "deleted":
        default_storage.delete(target.weights_file)
    else:
        with default_storage.open(target.weights_file, "rb") as fh:
            data = bytearray(fh.read())
        data[-1] ^= 0xFF
        with default_storage.open(target.weights_file, "wb") as fh:
            fh.write(bytes(data))

    assert services.aggregate_round(round_.pk) is None

    round_.refresh_from_db()
    experiment.refresh_from_db()
    assert round_.status == Round.Status.FAILED and round_.failure_code == Reason.QUORUM
    assert "2 usable of the 3 required" in round_.failure_reason
    assert [r["code"] for r in round_.metrics["rejected"]] == [Reason.UNREADABLE]
    assert not ModelVersion.objects.filter(experiment=experiment).exists()
    assert experiment.status == Experiment.Status.FAILED and experiment.failure_code == Reason.QUORUM
    # A retried aggregation task finds nothing to do.
    assert services.aggregate_round(round_.pk) is None
    assert not ModelVersion.objects.filter(experiment=experiment).exists()


def test_the_attack_of_issue_8_leaves_the_global_model_finite(four_hosted, make_experiment, drive):
    """3e38 weights with 2^31-1 samples, slipped past the upload checks straight into
    storage: aggregation still never produces a non-finite or implausible version."""
    experiment = make_experiment(four_hosted[:2], num_rounds=2, min_sites=1)
    services.start_experiment(experiment.pk)
    round_ = train_round(experiment, 1)
    victim = round_.updates.get(site__slug="site-1")
    replace_stored_update(victim, {k: np.full_like(v, ATTACK_VALUE) for k, v in
                                   artifacts.load_weights(victim.weights_file, victim.sha256).items()})
    ClientUpdate.objects.filter(pk=victim.pk).update(num_samples=ATTACK_COUNT)

    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    round_.refresh_from_db()
    assert "site-1" not in round_.metrics["accepted"]
    for version in ModelVersion.objects.filter(experiment=experiment):
        weights = artifacts.load_weights(version.weights_file, version.sha256)
        assert publishable(weights)
        assert all(np.isfinite(a).all() for a in weights.values())


def test_publishable_refuses_inf_nan_and_huge_weights():
    good = {"w": np.ones((2, 2), np.float32)}

    assert publishable(good)
    assert not publishable({"w": np.array([np.inf], np.float32)})
    assert not publishable({"w": np.array([np.nan], np.float32)})
    assert not publishable({"w": np.array([3e38], np.float32)})


def test_the_agent_upload_door_uses_the_same_rule(agent, mixed):
    """The API calls the service for its checks: the sample bound answers 400 there too,
    for any value above the site's rows."""
    data = weights_to_bytes(trained(mixed["experiment"]))

    assert upload(agent, mixed["round"].pk, data, num_samples=161).status_code == 400
    assert upload(agent, mixed["round"].pk, data, num_samples=160).status_code == 201
    assert agent.get(f"{API}/assignments/").status_code == 200
