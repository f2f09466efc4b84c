"""A site agent's own policy (--consent-policy) refuses an experiment that breaks it,
even when the site's admin accepted on the web and the server assigns the round: the
agent never claims, and reports why (code site_policy), which its site reads."""

from __future__ import annotations

import json

import pytest

from aggregation.models import ClientUpdate
from fedhealth.agent.client import ApiClient
from fedhealth.agent.data import LocalData
from fedhealth.agent.loop import SiteAgent
from fedhealth.agent.policy import LocalPolicy, PolicyError
from tests.consent_support import accept_invitations

pytest_plugins = ["clients.tests.api_fixtures"]


def make_agent(server: str, token: str, path, policy: LocalPolicy | None = None) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01),
        LocalData.from_source(path),
        name="local.csv",
        policy=policy,
    )


def start(api, dataset_ids, **extra) -> int:
    body = {
        "name": "policy",
        "datasets": dataset_ids,
        "num_rounds": 2,
        "local_epochs": 1,
        "min_sites": 1,
    }
    created = api.post("/api/v1/experiments/", body | extra, format="json")
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    assert accept_invitations(pk) == len(dataset_ids)  # the sites' admins said yes on the web
    assert api.post(f"/api/v1/experiments/{pk}/start/").status_code == 200
    return pk


@pytest.mark.django_db(transaction=True)
def test_an_agent_refuses_what_its_policy_forbids_whatever_the_server_assigns(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery
):
    (strict_site, strict_token), (easy_site, easy_token) = agent_sites
    policy = LocalPolicy(require_secure_aggregation=True, max_rounds=50)
    strict = make_agent(live_server.url, strict_token, agent_csv("strict", seed=3), policy)
    easy = make_agent(live_server.url, easy_token, agent_csv("easy", seed=4))
    experiment_id = start(client_for(charlie), [strict.register(), easy.register()])

    strict.run_once()
    easy.run_once()

    refused = ClientUpdate.objects.get(
        round__experiment_id=experiment_id, round__number=1, site=strict_site
    )
    assert refused.status == "failed" and refused.error_code == "site_policy"
    assert refused.attempts == 0 and refused.started_at is None  # never claimed
    assert "secure aggregation is off" in refused.site_note
    trained = ClientUpdate.objects.get(
        round__experiment_id=experiment_id, round__number=1, site=easy_site
    )
    assert trained.status == "received"
    # Its own site reads the reason; the coordinator reads the product's words only.
    mine = client_for(strict_site).get(f"/api/v1/updates/{refused.pk}/").json()
    assert "secure aggregation is off" in json.dumps(mine)


@pytest.mark.django_db(transaction=True)
def test_the_command_line_agent_reads_a_toml_policy(
    live_server, agent_sites, agent_csv, charlie, client_for, tmp_path
):
    from django.core.management import call_command

    site, token = agent_sites[0]
    csv = agent_csv("cli", rows=150, seed=5)
    dataset_id = make_agent(live_server.url, token, csv).register()
    experiment_id = start(client_for(charlie), [dataset_id], num_rounds=60)
    policy = tmp_path / "policy.toml"
    policy.write_text("max_rounds = 50\nmin_sites = 1\n")

    call_command(
        "site_agent",
        "--server",
        live_server.url,
        "--token",
        token,
        "--data",
        str(csv),
        "--consent-policy",
        str(policy),
        "--once",
        "--retries",
        "1",
    )

    update = ClientUpdate.objects.get(round__experiment_id=experiment_id, site=site)
    assert update.status == "failed" and update.error_code == "site_policy" and update.attempts == 0
    assert "60 rounds, more than this site's policy allows (50)" in update.site_note


def test_policy_rules_and_bad_files(tmp_path):
    terms = {
        "rounds": 10,
        "local_epochs": 2,
        "quorum": 2,
        "secure_aggregation": True,
        "privacy": {"mode": "record", "epsilon": 8.0},
    }
    assert (
        LocalPolicy(require_secure_aggregation=True, max_rounds=10, min_sites=2).refusals(terms)
        == []
    )
    assert LocalPolicy(min_sites=3).refusals(terms) == [
        "the experiment needs only 2 site(s) per round; this site's policy requires at least 3"
    ]
    assert LocalPolicy(max_epsilon=5).refusals(terms) == [
        "epsilon 8, more than this site's policy allows (5)"
    ]
    no_dp = terms | {"privacy": {"mode": "off", "epsilon": None}}
    assert len(LocalPolicy(require_dp=True, max_epsilon=5).refusals(no_dp)) == 2
    assert LocalPolicy().refusals(None)  # no terms: nothing to check, so refused

    path = tmp_path / "p.json"
    path.write_text('{"max_rounds": 0}')
    with pytest.raises(PolicyError, match="max_rounds must be a whole number of at least 1, not 0"):
        LocalPolicy.load(path)
    path.write_text('{"max_round": 5}')
    with pytest.raises(PolicyError, match="unknown setting 'max_round'"):
        LocalPolicy.load(path)
    toml = tmp_path / "p.toml"
    toml.write_text("require_dp = 'yes'")
    with pytest.raises(PolicyError, match="require_dp must be true or false, not 'yes'"):
        LocalPolicy.load(toml)
