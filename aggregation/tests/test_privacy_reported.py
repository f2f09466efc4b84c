"""An agent reports its own privacy spend with each update of a private experiment: the
server requires it, refuses a malformed one naming the field, records what was reported,
and flags (never corrects) a report that does not follow from the experiment's settings
and the registered rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from aggregation import services
from aggregation.models import ClientUpdate, ModelVersion, PrivacyLedgerEntry
from aggregation.policy import COORDINATOR, Viewer, version_privacy
from aggregation.services import artifacts, privacy
from clients.tests.api_support import error_fields
from fedhealth.ml.privacy import RoundSpend, epsilon_for
from fedhealth.ml.weights_io import sha256_hex, weights_to_bytes

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

API = "/api/v1/agent"


@pytest.fixture
def private(agent_site, make_experiment, remote_dataset):
    """A private experiment with one agent site (400 registered rows), round 1 claimed."""
    remote = remote_dataset(agent_site, rows=400, seed=5)
    experiment = make_experiment(
        [remote],
        min_sites=1,
        num_rounds=3,
        local_epochs=1,
        batch_size=50,
        dp_mode="record",
        dp_epsilon=2.0,
    )
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.get(round__experiment=experiment, round__number=1)
    return {"experiment": experiment, "update": update, "round": update.round}


def honest(update) -> dict:
    """What the agent's accountant gives for the registered rows (the server's own figure)."""
    return privacy.expected_spend(update).to_dict()


def upload(agent, round_, spend: dict | str | None, *, claim: bool = True):
    weights, _ = artifacts.global_weights_for(round_)
    data = weights_to_bytes({k: (v * 1.01).astype(np.float32) for k, v in weights.items()})
    form = {
        "weights": SimpleUploadedFile("u.safetensors", data),
        "sha256": sha256_hex(data),
        "num_samples": 300,
        "metrics": '{"accuracy": 0.8}',
    }
    if spend is not None:
        form["privacy"] = spend if isinstance(spend, str) else json.dumps(spend)
    if claim:
        assert agent.post(f"{API}/rounds/{round_.pk}/claim/").status_code == 200
    return agent.post(f"{API}/rounds/{round_.pk}/update/", form, format="multipart")


def test_a_consistent_report_is_recorded_once_with_the_update(agent, private):
    spend = honest(private["update"])

    first = upload(agent, private["round"], spend)
    # A replay of the same bytes: acknowledged, not counted twice.
    again = upload(agent, private["round"], spend, claim=False)

    assert first.status_code == 201, first.json()
    assert again.status_code == 200
    entry = PrivacyLedgerEntry.objects.get(experiment=private["experiment"])
    assert entry.source == "agent" and entry.update_id == private["update"].pk
    assert entry.consistency == "consistent" and entry.consistency_detail == ""
    assert entry.spend().to_dict() == spend
    services.aggregate_round(private["round"].pk)
    shown = version_privacy(
        Viewer(COORDINATOR), ModelVersion.objects.filter(experiment=private["experiment"])
    )
    assert list(shown.values())[0]["epsilon"] == pytest.approx(spend["epsilon_total"], rel=1e-9)


@pytest.mark.parametrize(
    "tamper, expected",
    [
        # Less noise than the settings give for 400 rows, epsilons recomputed honestly.
        ({"noise_multiplier": 0.5}, "noise_multiplier 0.5, the settings give"),
        # The noise the settings give, but an epsilon the accountant does not.
        ({"epsilon_total": 50.0}, "epsilon_total 50 is not the accountant's"),
    ],
)
def test_a_report_that_does_not_follow_from_the_settings_is_flagged_as_reported(
    agent, private, tamper, expected
):
    spend = honest(private["update"]) | tamper
    if "noise_multiplier" in tamper:  # a self-consistent report of a different noise
        mech = [(spend["noise_multiplier"], spend["sample_rate"], spend["steps"])]
        spend["epsilon"] = spend["epsilon_total"] = epsilon_for(mech, spend["delta"])

    response = upload(agent, private["round"], spend)

    assert response.status_code == 201, response.json()
    entry = PrivacyLedgerEntry.objects.get(experiment=private["experiment"])
    assert entry.consistency == "mismatch" and expected in entry.consistency_detail
    assert entry.noise_multiplier == spend["noise_multiplier"]  # as reported, not corrected
    assert PrivacyLedgerEntry.objects.count() == 1


@pytest.mark.parametrize(
    "spend, message",
    [
        (None, "trains with record-level DP: send the round's spend"),
        ("not json", "must be a JSON object"),
        ({"round": 1}, "needs exactly the keys"),
        ("round", None),
        ("nan", "noise_multiplier must be a finite number"),
        ("negative", "noise_multiplier = -1 is out of range"),
    ],
)
def test_a_missing_or_malformed_report_is_refused_naming_the_field(agent, private, spend, message):
    good = honest(private["update"])
    if spend == "round":
        spend, message = good | {"round": 2}, "round = 2 but this update is for round 1"
    elif spend == "nan":
        spend = json.dumps(good | {"noise_multiplier": "x"}).replace('"x"', "NaN")
    elif spend == "negative":
        spend = good | {"noise_multiplier": -1}

    response = upload(agent, private["round"], spend)

    assert response.status_code == 400
    assert message in " ".join(error_fields(response)["privacy"])
    assert not PrivacyLedgerEntry.objects.exists()
    assert ClientUpdate.objects.get(pk=private["update"].pk).status == "training"


def test_a_report_is_refused_without_dp(agent, agent_site, make_experiment, remote_dataset):
    experiment = make_experiment([remote_dataset(agent_site, rows=200, seed=6)], min_sites=1)
    services.start_experiment(experiment.pk)
    round_ = ClientUpdate.objects.get(round__experiment=experiment).round
    spend = RoundSpend(1, 1.0, 0.1, 10, 1e-5, 1.0, 0.5, 0.5).to_dict()

    response = upload(agent, round_, spend)

    assert response.status_code == 400
    assert "does not train with differential privacy" in " ".join(error_fields(response)["privacy"])
