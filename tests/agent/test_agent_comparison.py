"""Each agent site's alone / global / personalised figures at the end (issue 10): measured
once on its own machine, the models kept in its state folder, only figures sent, counted
exactly like a hosted site's; a single-label referral centre reads n/a where a figure
needs both classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregation.models import Experiment, SiteComparison
from aggregation.services import artifacts
from aggregation.services.site_comparison import selected_version
from fedhealth.agent.client import ApiClient
from fedhealth.agent.data import LocalData
from fedhealth.agent.loop import SiteAgent
from fedhealth.ml.model_file import load_model
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.synthetic import generate_site
from fedhealth.ml.training import evaluate
from tests.consent_support import accept_invitations

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


def agent_at(server: str, token: str, path, state) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01), LocalData.from_source(path),
        name="local.csv", state_dir=state,
    )


def start(charlie, dataset_ids, personalize: str) -> int:
    body = {"name": "compare", "datasets": dataset_ids, "num_rounds": 2, "local_epochs": 1,
            "min_sites": 2, "validation_fraction": 0.2}
    created = charlie.post("/api/v1/experiments/", body)
    assert created.status_code == 201, created.json()
    experiment_id = created.json()["id"]
    Experiment.objects.filter(pk=experiment_id).update(personalize=personalize)
    accept_invitations(experiment_id)
    assert charlie.post(f"/api/v1/experiments/{experiment_id}/start/").status_code == 200
    return experiment_id


def test_agents_report_alone_global_personalised_once_and_keep_the_models(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery, tmp_path
):
    (referral, referral_token), (general, general_token) = agent_sites
    pool = generate_site(400, seed=9, healthy_fraction=0.2)
    referral_csv = tmp_path / "referral.csv"
    pool[pool.healthy == 0].head(40).to_csv(referral_csv, index=False)  # every patient unhealthy
    general_csv = agent_csv(general.slug, rows=240, seed=21)
    states = [tmp_path / "state-referral", tmp_path / "state-general"]
    agents = [agent_at(live_server.url, referral_token, referral_csv, states[0]),
              agent_at(live_server.url, general_token, general_csv, states[1])]
    experiment_id = start(client_for(charlie), [a.register() for a in agents], "fedper")

    for _ in range(8):
        for a in agents:
            a.run_once()

    experiment = Experiment.objects.get(pk=experiment_id)
    assert experiment.status == "completed", experiment.failure_reason
    chosen = selected_version(experiment)
    rows = {c.participant.site_id: c for c in SiteComparison.objects.select_related("participant")}
    assert set(rows) == {referral.pk, general.pk}
    for row in rows.values():
        assert (row.status, row.source, row.mode, row.version) == ("done", "agent", "fedper", chosen)
        assert row.personal_file == ""  # an agent's model never reaches the server
        assert all(isinstance(m["accuracy"], float) for m in (row.alone, row.global_metrics, row.personalized))
    # The referral centre: AUROC and balanced accuracy need both classes, so n/a (null).
    single = rows[referral.pk]
    for metrics in (single.alone, single.global_metrics, single.personalized):
        assert metrics["auroc"] is None and metrics["balanced_accuracy"] is None
        assert metrics["sensitivity"] is not None
    assert all(isinstance(m["auroc"], float) for m in (rows[general.pk].alone, rows[general.pk].personalized))

    # The global figures are the selected version on the site's own test rows.
    data = LocalData.from_source(general_csv)
    split = data.split(general.slug, test_fraction=experiment.test_fraction, seed=experiment.seed)
    weights = artifacts.load_weights(chosen.weights_file, chosen.sha256)
    normalizer = Normalizer.from_dict(experiment.normalizer)
    expected = evaluate(experiment.model_config, weights, normalizer.transform(split.X_test), split.y_test,
                        positive=experiment.schema_obj.positive_value)
    assert rows[general.pk].global_metrics["accuracy"] == pytest.approx(expected["accuracy"])

    # Both models stay in the agent's folder, self-describing, and reproduce its figures.
    folder = states[1] / "comparisons"
    record = json.loads((folder / f"e{experiment_id}.json").read_text())
    assert record["posted"] is True and record["figures"]["version"] == chosen.version
    for kind, figures in (("local", rows[general.pk].alone), ("personal", rows[general.pk].personalized)):
        model = load_model(folder / f"e{experiment_id}-{kind}.safetensors")
        prob = model.predict_proba(split.X_test)
        accuracy = float(np.mean((prob >= 0.5) == (split.y_test == 1)))
        assert accuracy == pytest.approx(figures["accuracy"])

    # Once per experiment: nothing more is assigned, and a restarted agent trains nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = agent_at(live_server.url, general_token, general_csv, states[1])
    again.register()
    assert again.client.get_json("/agent/assignments/")["comparisons"] == []
    again.run_once()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_a_restart_posts_what_was_measured_without_training_again(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery, tmp_path
):
    paths = [agent_csv(site.slug, rows=160, seed=40 + i) for i, (site, _) in enumerate(agent_sites)]
    states = [tmp_path / f"state-{i}" for i in range(2)]
    agents = [agent_at(live_server.url, token, path, state)
              for (_, token), path, state in zip(agent_sites, paths, states, strict=True)]
    experiment_id = start(client_for(charlie), [a.register() for a in agents], "finetune")
    for _ in range(6):
        for a in agents:
            work = a.client.get_json("/agent/assignments/")
            for item in work["training"]:
                a.train(item)
            for item in work["evaluations"]:
                a.evaluate(item)
    assert Experiment.objects.get(pk=experiment_id).status == "completed"

    # The agent measured and wrote its record, then stopped before posting.
    first = agents[0]
    item = first.client.get_json("/agent/assignments/")["comparisons"][0]
    first.comparer.store.save(experiment_id, first.comparer.measure(item, first.site))
    folder = states[0] / "comparisons"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    assert not SiteComparison.objects.filter(participant__site=agent_sites[0][0]).exists()

    restarted = agent_at(live_server.url, agent_sites[0][1], paths[0], states[0])
    restarted.register()
    restarted.run_once()

    row = SiteComparison.objects.get(participant__site=agent_sites[0][0])
    assert row.status == "done" and row.mode == "finetune"
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")} == stamps
    assert json.loads((folder / f"e{experiment_id}.json").read_text())["posted"] is True
