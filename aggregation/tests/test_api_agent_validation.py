"""An agent's validation loss (issue 10): sent with each evaluation when the experiment
holds out a validation slice, checked against the site's registered rows and the loss's
bounds, and counted in the best-version selection exactly as a hosted site's."""

from __future__ import annotations

import pytest

from aggregation import services
from aggregation.models import ClientUpdate, ModelVersion, SiteEvaluation
from aggregation.services.recommend import recommended_version
from clients.tests.api_support import error_fields
from fedhealth.ml.sitework import validation_rows
from fedhealth.ml.weights_io import weights_to_bytes

from .test_api_agent import API, trained, upload

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def two_sites(site_a, agent_site, make_dataset, make_experiment, remote_dataset):
    """``two_sites(validation_fraction)``: hosted site A and the agent site (160 rows
    each), two rounds, started."""

    def make(validation_fraction: float):
        remote = remote_dataset(agent_site, rows=160, seed=5)
        experiment = make_experiment(
            [make_dataset(site_a, rows=160, seed=4), remote],
            min_sites=2, num_rounds=2, validation_fraction=validation_fraction,
        )
        services.start_experiment(experiment.pk)
        experiment.refresh_from_db()
        return experiment

    return make


@pytest.fixture
def validated(two_sites):
    """A fifth of each site's training rows held out for validation."""
    return two_sites(0.2)


def train_round(agent, experiment, number: int, drive) -> None:
    round_ = experiment.rounds.get(number=number)
    assert agent.post(f"{API}/rounds/{round_.pk}/claim/").status_code == 200
    body = weights_to_bytes(trained(experiment))
    assert upload(agent, round_.pk, body).status_code == 201
    drive(experiment.pk)


def expected_n(experiment) -> float:
    return float(validation_rows(160, test_fraction=experiment.test_fraction, validation_fraction=0.2))


def test_the_agents_validation_loss_is_stored_and_selects_the_best_version(
    agent, agent_site, validated, drive
):
    train_round(agent, validated, 1, drive)
    item = agent.get(f"{API}/assignments/").json()["evaluations"][0]
    assert item["validation_fraction"] == 0.2 and item["seed"] == validated.seed
    n = expected_n(validated)
    assert 20 <= n <= 30  # a fifth of the 120 training rows of 160

    v1_url = f"{API}/models/{item['model']}/evaluation/"
    metrics = {"accuracy": 0.8, "validation_loss": 0.1, "validation_n": n}
    assert agent.post(v1_url, {"metrics": metrics}).status_code == 201
    train_round(agent, validated, 2, drive)
    v2 = ModelVersion.objects.get(experiment=validated, version=2)
    response = agent.post(
        f"{API}/models/{v2.pk}/evaluation/",
        {"metrics": {"accuracy": 0.8, "validation_loss": 5.0, "validation_n": n}},
    )
    assert response.status_code == 201, response.json()

    validated.refresh_from_db()
    assert validated.status == "completed"
    versions = list(ModelVersion.objects.filter(experiment=validated).order_by("version"))
    for version, agent_loss in zip(versions, (0.1, 5.0), strict=True):
        stored = SiteEvaluation.objects.get(version=version, site=agent_site).metrics
        assert (stored["validation_loss"], stored["validation_n"]) == (agent_loss, n)
        hosted = SiteEvaluation.objects.exclude(site=agent_site).get(version=version).metrics
        # The row-weighted mean over the hosted site and the agent, as selection counts it.
        weighted = (hosted["validation_loss"] * hosted["validation_n"] + agent_loss * n) / (
            hosted["validation_n"] + n
        )
        assert version.metrics["validation_sites"] == 2
        assert version.metrics["validation_loss"] == pytest.approx(weighted)
    # The agent's slice weighs as much as the hosted site's: its low loss on v1 wins.
    assert recommended_version(validated, versions).version == 1


@pytest.mark.parametrize(
    "sent, field, words",
    [
        ({"validation_loss": "nan"}, "metrics.validation_loss", "must be a finite number, got 'nan'"),
        ({"validation_loss": "inf"}, "metrics.validation_loss", "must be a finite number, got 'inf'"),
        ({"validation_loss": -0.5}, "metrics", "'validation_loss' (mean log loss per row) must be between 0 and 100, got -0.5"),
        ({"validation_loss": 1e9}, "metrics", "'validation_loss' (mean log loss per row) must be between 0 and 100, got 1000000000.0"),
        ({"validation_n": 2.5}, "metrics", "'validation_n' must be a whole number of rows, got 2.5"),
        ({"validation_n": 100000.0}, "metrics", "must be the {n} rows of this site's validation slice (of its 160 registered rows), got 100000.0"),
        ({"validation_n": None}, "metrics", "send validation_loss and validation_n with the evaluation"),
        ({"validation_loss": None}, "metrics", "send validation_loss and validation_n with the evaluation"),
    ],
)
def test_bad_validation_figures_are_a_400_naming_the_field_and_value(
    agent, agent_site, validated, drive, sent, field, words
):
    train_round(agent, validated, 1, drive)
    model = agent.get(f"{API}/assignments/").json()["evaluations"][0]["model"]
    n = expected_n(validated)
    metrics = {"accuracy": 0.8, "validation_loss": 0.4, "validation_n": n} | sent
    metrics = {k: v for k, v in metrics.items() if v is not None}

    response = agent.post(f"{API}/models/{model}/evaluation/", {"metrics": metrics})

    assert response.status_code == 400, response.json()
    errors = error_fields(response)
    assert field in errors and words.format(n=int(n)) in " ".join(errors[field]), errors
    assert not SiteEvaluation.objects.filter(version_id=model, site=agent_site).exists()


def test_a_nan_json_token_is_refused_before_anything_is_read(agent, validated, drive):
    train_round(agent, validated, 1, drive)
    model = agent.get(f"{API}/assignments/").json()["evaluations"][0]["model"]

    response = agent.post(
        f"{API}/models/{model}/evaluation/",
        '{"metrics": {"accuracy": 0.8, "validation_loss": NaN, "validation_n": 26}}',
        content_type="application/json",
    )

    assert response.status_code == 400 and "NaN" in response.json()["detail"], response.json()


def test_validation_figures_without_a_slice_are_refused(agent, two_sites, drive):
    train_round(agent, two_sites(0.0), 1, drive)
    item = agent.get(f"{API}/assignments/").json()["evaluations"][0]
    assert item["validation_fraction"] == 0

    response = agent.post(
        f"{API}/models/{item['model']}/evaluation/",
        {"metrics": {"accuracy": 0.8, "validation_loss": 0.3, "validation_n": 20.0}},
    )

    assert response.status_code == 400
    assert "holds out no validation slice: omit validation_loss and validation_n" in " ".join(
        error_fields(response)["metrics"]
    )


def test_the_claim_sends_the_slice_so_the_agent_never_trains_on_it(agent, validated):
    round_ = validated.rounds.get(number=1)
    task = agent.post(f"{API}/rounds/{round_.pk}/claim/").json()

    assert task["split"] == {
        "test_fraction": validated.test_fraction, "seed": validated.seed, "validation_fraction": 0.2,
    }
    assert ClientUpdate.objects.get(round=round_, site__mode="agent").status == "training"
