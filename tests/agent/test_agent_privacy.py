"""An agent derives its own privacy spend, records it in its own ledger before training,
reports it with its update, and refuses a round past its own budget through the failure
endpoint, whatever the server asks; a restarted agent reads its spend back from its state
folder."""

from __future__ import annotations

import json

import pytest

from aggregation.models import ClientUpdate, Experiment, Participant, PrivacyLedgerEntry
from aggregation.reasons import Reason
from aggregation.services.consent import record_acceptance
from fedhealth.agent.client import ApiClient
from fedhealth.agent.data import LocalData
from fedhealth.agent.ledger import LEDGER_FILE, AgentLedger, fingerprint
from fedhealth.agent.loop import SiteAgent
from fedhealth.ml.privacy import composed_epsilon

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


def make_agent(server, token, path, state, budget=None) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01),
        LocalData.from_source(path),
        ledger=AgentLedger(state, budget=budget),
    )


def start_private(api, dataset_ids, **dp) -> int:
    body = {
        "name": "dp",
        "datasets": dataset_ids,
        "num_rounds": 3,
        "local_epochs": 1,
        "min_sites": 1,
    }
    created = api.post("/api/v1/experiments/", body)
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    # The experiment's DP request (set on the model: what the creation doors send).
    Experiment.objects.filter(pk=pk).update(dp_mode="record", **dp)
    for participant in Participant.objects.filter(experiment_id=pk):
        record_acceptance(participant)  # each site accepts the terms, DP request included
    assert api.post(f"/api/v1/experiments/{pk}/start/").status_code == 200
    return pk


def test_an_agent_at_its_budget_refuses_and_a_restart_keeps_its_spend(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery, tmp_path
):
    site, token = agent_sites[0]
    path = agent_csv("dp", rows=400, seed=5)
    state = tmp_path / "state"
    # The server asks for epsilon 8 over 3 rounds; this site allows 6 in all.
    agent = make_agent(live_server.url, token, path, state, budget=6.0)
    experiment_id = start_private(client_for(charlie), [agent.register()], dp_epsilon=8.0)

    agent.run_once()  # round 1 (epsilon about 5.3) fits
    first = ClientUpdate.objects.get(round__experiment_id=experiment_id, round__number=1)
    assert first.status == "received"
    rows = fingerprint(agent.data.X, agent.data.y)
    recorded = agent.ledger.spends(rows)
    assert [s.round for s in recorded] == [1]
    assert 0 < recorded[0].epsilon_total <= 6.0
    # It reported that spend with its update; the server recorded it, checked against the
    # settings and the registered rows.
    reported = PrivacyLedgerEntry.objects.get(experiment_id=experiment_id)
    assert reported.source == "agent" and reported.update_id == first.pk
    assert reported.consistency == "consistent", reported.consistency_detail
    assert reported.spend() == recorded[0]

    # A restart: a new agent process with the same state folder, same budget.
    restarted = make_agent(live_server.url, token, path, state, budget=6.0)
    restarted.register()
    assert restarted.ledger.spent(rows) == pytest.approx(composed_epsilon(recorded))
    restarted.run_once()  # round 2 would pass 6: refused through the failure endpoint

    second = ClientUpdate.objects.get(round__experiment_id=experiment_id, round__number=2)
    assert second.status == "failed"
    assert second.error_code == Reason.PRIVACY_BUDGET
    assert second.error == Reason.PRIVACY_BUDGET.label
    assert "of 6.000" in second.site_note and "does not train" in second.site_note
    assert not second.weights_file
    lines = (state / LEDGER_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["experiment"] == experiment_id
    assert PrivacyLedgerEntry.objects.filter(experiment_id=experiment_id).count() == 1


def test_an_agent_without_a_ledger_does_not_train_a_private_round(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery
):
    site, token = agent_sites[0]
    agent = SiteAgent(
        ApiClient(live_server.url, token, retries=1, backoff=0.01),
        LocalData.from_source(agent_csv("nolog", rows=300, seed=6)),
    )
    experiment_id = start_private(client_for(charlie), [agent.register()])

    agent.run_once()

    update = ClientUpdate.objects.get(round__experiment_id=experiment_id, round__number=1)
    assert update.status == "failed" and update.error_code == Reason.PRIVACY_SETTINGS
    assert "--state-dir" in update.site_note


def test_the_ledger_file_is_exact_across_two_experiments(tmp_path):
    from fedhealth.ml.privacy import PrivacySettings, plan_round_spend

    ledger = AgentLedger(tmp_path)
    spends = [
        plan_round_spend(
            PrivacySettings(epsilon=e, rounds=2), round_number=r, rows=300, epochs=1, batch_size=32
        )
        for e in (1.0, 2.0)
        for r in (1, 2)
    ]
    for i, spend in enumerate(spends):
        ledger.reserve("rows-a", spend, experiment=1 + i // 2)
    ledger.reserve("rows-b", spends[0], experiment=9)  # other rows: their own account

    again = AgentLedger(tmp_path)
    assert again.spends("rows-a") == spends
    assert again.spent("rows-a") == pytest.approx(composed_epsilon(spends), rel=1e-12)
    assert again.spent("rows-b") == pytest.approx(spends[0].epsilon_total, rel=1e-12)
    with pytest.raises(ValueError, match="privacy budget must be >= 0, got -1"):
        AgentLedger(tmp_path, budget=-1)
