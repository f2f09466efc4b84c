"""An agent SIGKILLed while training, then restarted, finishes the round: one update counted."""

from __future__ import annotations

import signal

import pytest
import requests

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from clients.models import ApiToken, Dataset
from tests.consent_support import accept_invitations
from tests.support import wait_until

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),
]


def test_a_killed_agent_resumes_and_its_update_counts_once(
    stack, start_agent, agent_sites, agent_csv, charlie
):
    (big_site, big_token), (small_site, small_token) = agent_sites
    # Large enough that local training takes seconds: time to kill it mid-way.
    big_csv, small_csv = (
        agent_csv("big", rows=16_000, seed=41),
        agent_csv("small", rows=300, seed=42),
    )
    big = start_agent(big_token, big_csv, "big")
    small = start_agent(small_token, small_csv, "small")
    wait_until(
        lambda: Dataset.objects.filter(site__mode="agent").count() == 2,
        timeout=120,
        what="registrations",
        watch=[stack.web, big, small],
    )
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ApiToken.issue(user=charlie)[1]}"
    ids = list(Dataset.objects.filter(site__mode="agent").values_list("pk", flat=True))
    created = session.post(
        f"{stack.url}/api/v1/experiments/",
        json={
            "name": "restart",
            "datasets": ids,
            "num_rounds": 2,
            "local_epochs": 3,
            "min_sites": 2,
        },
    ).json()
    accept_invitations(created["id"])  # each site's admin accepts, on the web
    assert session.post(f"{stack.url}/api/v1/experiments/{created['id']}/start/").status_code == 200
    update = ClientUpdate.objects.get(
        round__experiment_id=created["id"], round__number=1, site=big_site
    )

    wait_until(
        lambda: ClientUpdate.objects.get(pk=update.pk).status == "training",
        timeout=120,
        what="the big site training round 1",
        watch=[big],
    )
    big.kill(signal.SIGKILL)
    update.refresh_from_db()
    assert update.status == "training" and update.attempts == 1, "the kill should land mid-training"
    assert Round.objects.get(pk=update.round_id).status == "open"

    big.start()

    def done() -> bool:
        experiment = Experiment.objects.get(pk=created["id"])
        assert experiment.status not in ("failed", "cancelled"), experiment.failure_reason
        return experiment.status == "completed" and all(
            v.metrics.get("sites_reported") == 2
            for v in ModelVersion.objects.filter(experiment=experiment)
        )

    wait_until(
        done,
        timeout=400,
        what="the experiment after the restart",
        watch=[stack.web, stack.worker, big, small],
    )
    update.refresh_from_db()
    assert update.status == "received" and update.attempts == 2 and update.source == "agent"
    first = Round.objects.get(pk=update.round_id)
    assert sorted(first.metrics["accepted"]) == sorted([big_site.slug, small_site.slug])
    assert first.metrics["num_samples"] == sum(
        first.updates.filter(status="received").values_list("num_samples", flat=True)
    )
    assert "claimed (attempt 2)" in big.logs(tail=None)
