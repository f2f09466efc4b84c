"""Two site agents run a federated experiment against a live (in-process) server."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.models import ClientUpdate, Experiment, ModelVersion
from aggregation.services import artifacts
from fedhealth.agent.client import ApiClient
from fedhealth.agent.data import LocalData
from fedhealth.agent.loop import SiteAgent
from fedhealth.ml.federation import round_seed, split_site
from fedhealth.ml.model import init_weights
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.training import train_local
from fedhealth.ml.weights_io import sha256_hex, weights_to_bytes
from tests.consent_support import accept_invitations

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


def make_agent(server: str, token: str, path) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01),
        LocalData.from_source(path),
        name="local.csv",
    )


def start(charlie, dataset_ids, **extra) -> int:
    body = {
        "name": "agents",
        "datasets": dataset_ids,
        "num_rounds": 2,
        "local_epochs": 1,
        "min_sites": 2,
    } | extra
    created = charlie.post("/api/v1/experiments/", body)
    assert created.status_code == 201, created.json()
    accept_invitations(created.json()["id"])  # each site's admin accepts, on the web
    assert charlie.post(f"/api/v1/experiments/{created.json()['id']}/start/").status_code == 200
    return created.json()["id"]


def test_agents_train_and_evaluate_a_whole_experiment(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery
):
    paths = [agent_csv(site.slug, rows=240, seed=20 + i) for i, (site, _) in enumerate(agent_sites)]
    agents = [
        make_agent(live_server.url, token, path)
        for (_, token), path in zip(agent_sites, paths, strict=True)
    ]
    ids = [a.register() for a in agents]
    experiment_id = start(client_for(charlie), ids)

    for _ in range(6):
        for a in agents:
            a.run_once()

    experiment = Experiment.objects.get(pk=experiment_id)
    assert experiment.status == "completed", experiment.failure_reason
    versions = ModelVersion.objects.filter(experiment=experiment).order_by("version")
    assert [v.metrics["sites_reported"] for v in versions] == [2, 2]
    updates = ClientUpdate.objects.filter(round__experiment=experiment)
    assert (
        updates.count() == 4
        and {u.source for u in updates} == {"agent"}
        and {u.attempts for u in updates} == {1}
    )
    assert all({"accuracy", "auroc"} <= set(u.metrics) for u in updates)
    evaluation = versions.last().evaluations.first()
    assert set(evaluation.curves) == {"roc", "calibration", "confusion"}

    # The agent trained exactly as a hosted worker would have (same split, seed, normaliser).
    site, _ = agent_sites[0]
    data = LocalData.from_source(paths[0])
    split = split_site(
        site.slug, data.X, data.y, test_fraction=experiment.test_fraction, seed=experiment.seed
    )
    normalizer = Normalizer.from_dict(experiment.normalizer)
    expected = train_local(
        experiment.model_config,
        init_weights(experiment.model_config, experiment.seed),
        normalizer.transform(split.X_train),
        split.y_train,
        experiment.train_config(round_seed(experiment.seed, 1, site.slug)),
    )
    update = updates.get(round__number=1, site=site)
    assert update.sha256 == sha256_hex(weights_to_bytes(expected.weights))
    stored = artifacts.load_weights(update.weights_file, update.sha256)
    np.testing.assert_array_equal(
        next(iter(stored.values())), next(iter(expected.weights.values()))
    )


def test_an_agent_whose_csv_changed_reports_a_failure(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery
):
    (site0, token0), (site1, token1) = agent_sites
    first = make_agent(live_server.url, token0, agent_csv("a", seed=1))
    other = make_agent(live_server.url, token1, agent_csv("b", seed=2))
    experiment_id = start(client_for(charlie), [first.register(), other.register()])

    changed = make_agent(live_server.url, token0, agent_csv("a2", seed=99))  # same site, new CSV
    changed.run_once()

    update = ClientUpdate.objects.get(round__experiment_id=experiment_id, site=site0)
    # The agent's words are its own site's note; the reason shown to others is the product's.
    assert update.status == "failed" and update.error_code == "site_reported"
    assert "no longer matches" in update.site_note and "no longer matches" not in update.error


def test_the_manage_py_wrapper_runs_one_pass(live_server, agent_sites, agent_csv):
    from django.core.management import call_command

    site, token = agent_sites[0]
    call_command(
        "site_agent",
        "--server",
        live_server.url,
        "--token",
        token,
        "--data",
        str(agent_csv("w", rows=120)),
        "--once",
        "--retries",
        "1",
    )

    assert site.datasets.get().row_count == 120


def test_a_person_cannot_drive_an_agent(live_server, alice, agent_csv):
    from clients.models import ApiToken

    _, raw = ApiToken.issue(user=alice)
    agent = make_agent(live_server.url, raw, agent_csv("p", rows=120))

    from fedhealth.agent.client import ApiError

    with pytest.raises(ApiError) as caught:
        agent.register()
    assert caught.value.status == 403
