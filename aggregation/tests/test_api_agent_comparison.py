"""agent/experiments/<id>/comparison/: an agent site's alone / global / personalised
figures at the end of an experiment, through record_site_comparison (the one door);
only for itself, once, bounded, never a model."""

from __future__ import annotations

import json

import pytest

from aggregation import services
from aggregation.models import SiteComparison
from clients.tests.api_support import error_fields
from fedhealth.ml.weights_io import weights_to_bytes

from .test_api_agent import API, trained, upload

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

METRICS = {"accuracy": 0.8, "balanced_accuracy": 0.75, "auroc": None, "loss": 0.4, "n": 40}
FIGURES = {"alone": METRICS, "global": METRICS | {"accuracy": 0.82}, "personalized": METRICS,
           "mode": "fedper"}


@pytest.fixture
def finished(site_a, agent_site, make_dataset, make_experiment, remote_dataset, agent, drive):
    """Hosted site A and the agent site: one round, trained, aggregated and completed;
    the agent has not evaluated the version yet. Returns the experiment."""
    experiment = make_experiment(
        [make_dataset(site_a, rows=160, seed=4), remote_dataset(agent_site, rows=160, seed=5)],
        min_sites=2, num_rounds=1, personalize="fedper",
    )
    services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    round_ = experiment.rounds.get(number=1)
    assert agent.post(f"{API}/rounds/{round_.pk}/claim/").status_code == 200
    assert upload(agent, round_.pk, weights_to_bytes(trained(experiment))).status_code == 201
    drive(experiment.pk)
    experiment.refresh_from_db()
    assert experiment.status == "completed"
    return experiment


def evaluate_all(agent):
    for item in agent.get(f"{API}/assignments/").json()["evaluations"]:
        assert agent.post(f"{API}/models/{item['model']}/evaluation/", {"metrics": {"accuracy": 0.8}}).status_code == 201


def url(experiment) -> str:
    return f"{API}/experiments/{experiment.pk}/comparison/"


def test_the_comparison_is_assigned_after_the_sites_evaluations_and_recorded_once(agent, agent_site, finished):
    assert agent.get(f"{API}/assignments/").json()["comparisons"] == []  # v1 not evaluated yet
    evaluate_all(agent)
    (item,) = agent.get(f"{API}/assignments/").json()["comparisons"]
    version = finished.versions.get()
    assert item | {"config": None} == {
        "experiment": finished.pk, "model": version.pk, "version": 1, "sha256": version.sha256,
        "dataset": finished.participants.get(site=agent_site).dataset_id, "mode": "fedper",
        "test_fraction": finished.test_fraction, "seed": finished.seed, "config": None,
    }
    assert item["config"]["rounds"] == 1 and item["config"]["seed"] == finished.seed

    first = agent.post(url(finished), FIGURES | {"version": 1})
    again = agent.post(url(finished), FIGURES | {"version": 1, "alone": METRICS | {"accuracy": 0.1}})

    assert (first.status_code, again.status_code) == (201, 200), first.json()
    assert (first.json()["recorded"], again.json()["recorded"]) == (True, False)
    row = SiteComparison.objects.get(participant__site=agent_site)
    assert (row.source, row.status, row.mode, row.version) == ("agent", "done", "fedper", version)
    assert row.alone["accuracy"] == 0.8 and row.alone["auroc"] is None  # the first report stands
    assert row.global_metrics["accuracy"] == 0.82 and row.personal_file == ""
    assert agent.get(f"{API}/assignments/").json()["comparisons"] == []


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"alone": METRICS | {"auroc": 1.5}}, "alone", "auroc must be between 0 and 1; got 1.5"),
        ({"global": METRICS | {"loss": -1}}, "global", "loss must be between 0 and 1e+06; got -1"),
        ({"alone": METRICS | {"accuracy": "nan"}}, "alone", "accuracy must be a number or null, not 'nan'"),
        ({"personalized": METRICS | {"rows": 3}}, "personalized", "'rows' is not a metric"),
        ({"mode": None}, "mode", "personalised figures need the mode"),
        ({"mode": "magic"}, "mode", "not 'magic'"),
        ({"weights": [1, 2]}, "weights", "'weights' is not part of a site comparison"),
        ({"version": 7}, "version", "this experiment has no version 7"),
    ],
)
def test_bad_figures_are_a_400_naming_the_field(agent, agent_site, finished, change, field, words):
    evaluate_all(agent)

    response = agent.post(url(finished), FIGURES | {"version": 1} | change)

    assert response.status_code == 400, response.json()
    errors = error_fields(response)
    assert field in errors and words in " ".join(errors[field]), errors
    assert not SiteComparison.objects.filter(participant__site=agent_site).exists()


def test_a_nan_token_and_an_oversized_body_are_refused(agent, finished):
    evaluate_all(agent)
    text = json.dumps(FIGURES | {"version": 1}).replace('"auroc": null', '"auroc": NaN', 1)

    nan = agent.post(url(finished), text, content_type="application/json")
    big = agent.post(url(finished), FIGURES | {"version": 1, "padding": "x" * 20_000})

    assert nan.status_code == 400 and "NaN" in nan.json()["detail"]
    assert big.status_code == 413, big.json()


def test_a_site_posts_only_for_itself_and_only_as_an_agent_once_finished(
    agent, site_a, finished, make_site, client_for, make_experiment, remote_dataset, agent_site
):
    outsider = make_site("agent-b", mode="agent")
    assert client_for(outsider).post(url(finished), FIGURES).status_code == 404  # not its experiment
    hosted = client_for(site_a).post(url(finished), FIGURES | {"version": 1})
    assert hosted.status_code == 403 and "is hosted" in hosted.json()["detail"]  # IsSiteAgent
    running = make_experiment([remote_dataset(agent_site, rows=160, seed=5)], num_rounds=2)
    services.start_experiment(running.pk)
    early = agent.post(url(running), FIGURES)
    assert early.status_code == 409 and "not completed" in early.json()["detail"]


def test_the_comparison_waits_until_every_sites_evaluation_is_in(
    agent, agent_site, make_site, client_for, make_experiment, remote_dataset
):
    other_site = make_site("agent-b", mode="agent")
    other = client_for(other_site)
    experiment = make_experiment(
        [remote_dataset(agent_site, rows=160, seed=5), remote_dataset(other_site, rows=160, seed=6)],
        min_sites=2, num_rounds=1,
    )
    services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    round_ = experiment.rounds.get(number=1)
    for client in (agent, other):
        assert client.post(f"{API}/rounds/{round_.pk}/claim/").status_code == 200
        assert upload(client, round_.pk, weights_to_bytes(trained(experiment))).status_code == 201
    services.aggregate_round(round_.pk)
    experiment.refresh_from_db()
    assert experiment.status == "completed"

    evaluate_all(agent)
    # The other site's validation loss could still change the selected version.
    assert agent.get(f"{API}/assignments/").json()["comparisons"] == []
    evaluate_all(other)
    assert [i["experiment"] for i in agent.get(f"{API}/assignments/").json()["comparisons"]] == [experiment.pk]


def test_a_silent_site_holds_the_comparison_only_until_the_evaluation_grace_ends(
    agent, agent_site, make_site, make_experiment, remote_dataset, client_for, settings
):
    other_site = make_site("agent-b", mode="agent")
    experiment = make_experiment(
        [remote_dataset(agent_site, rows=160, seed=5), remote_dataset(other_site, rows=160, seed=6)],
        min_sites=2, num_rounds=1,
    )
    services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    round_ = experiment.rounds.get(number=1)
    for client in (agent, client_for(other_site)):
        assert client.post(f"{API}/rounds/{round_.pk}/claim/").status_code == 200
        assert upload(client, round_.pk, weights_to_bytes(trained(experiment))).status_code == 201
    services.aggregate_round(round_.pk)
    evaluate_all(agent)
    assert agent.get(f"{API}/assignments/").json()["comparisons"] == []

    settings.FEDHEALTH_EVALUATION_GRACE_SECONDS = 0  # the grace has passed

    assert len(agent.get(f"{API}/assignments/").json()["comparisons"]) == 1
