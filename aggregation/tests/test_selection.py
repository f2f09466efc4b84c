"""The best version by the sites' validation loss, the recommendation, and the
self-description a downloaded version carries (no database needed: plain instances)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.models import Experiment, ModelVersion
from aggregation.services.recommend import recommended_version
from aggregation.services.selection import best_version, describe_version, validation_summary
from fedhealth.ml import load_model
from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.weights_io import save_weights


def _version(number: int, loss: float | None = None, sites: int = 3) -> ModelVersion:
    metrics = {"mean": {"accuracy": 0.8}, "sites_reported": sites}
    if loss is not None:
        metrics |= {"validation_loss": loss, "validation_sites": sites}
    return ModelVersion(experiment_id=1, version=number, metrics=metrics)


def test_validation_summary_weights_by_rows_and_skips_sites_without_a_slice():
    summary = validation_summary(
        [
            {"validation_loss": 0.2, "validation_n": 30.0},
            {"validation_loss": 0.6, "validation_n": 10.0},
            {"accuracy": 0.9},  # a site without a validation slice
        ]
    )
    assert summary == {"validation_loss": pytest.approx(0.3), "validation_sites": 2}
    assert validation_summary([{"accuracy": 0.9}]) == {}


def test_best_version_is_the_lowest_loss_among_the_best_covered_versions():
    versions = [
        _version(1, 0.5),
        _version(2, 0.3),
        _version(3, 0.4),
        _version(4, 0.1, sites=2),
        _version(5),
    ]
    assert best_version(versions).version == 2  # v4's lower loss stands on fewer sites
    assert best_version([_version(1, 0.3), _version(2, 0.3)]).version == 1  # ties: the earlier
    assert best_version([_version(1), _version(2)]) is None


def test_a_finished_experiment_recommends_its_best_version_else_its_last():
    experiment = Experiment(pk=1, status=Experiment.Status.COMPLETED)
    assert (
        recommended_version(
            experiment, [_version(1, 0.5), _version(2, 0.2), _version(3, 0.4)]
        ).version
        == 2
    )
    assert recommended_version(experiment, [_version(1), _version(2)]).version == 2
    running = Experiment(pk=1, status=Experiment.Status.RUNNING)
    assert recommended_version(running, [_version(1, 0.5), _version(2, 0.2)]) is None


def test_a_described_version_loads_from_the_file_alone(tmp_path):
    experiment = Experiment(pk=9, name="Ward study", strategy="fedavg")
    cfg = ModelConfig(n_features=4, hidden=(8,))
    version = ModelVersion(
        experiment=experiment,
        version=7,
        schema=DEFAULT_SCHEMA.to_dict(),
        model_config=cfg.to_dict(),
        normalizer={"mean": [78.0, 124.0, 80.0, 96.5], "std": [14.0, 15.0, 9.0, 2.2]},
        metrics={
            "mean": {"accuracy": 0.81, "auroc": None},
            "validation_loss": 0.4,
            "validation_sites": 3,
        },
    )
    path = tmp_path / "v7.safetensors"
    save_weights(
        path, init_weights(cfg, 0), describe_version(
        version, metrics=version.metrics["mean"], privacy={"epsilon": 2.0}, best=True
    )
    )
    model = load_model(path)
    assert model.card["experiment"] == {"id": 9, "name": "Ward study", "strategy": "fedavg"}
    assert model.card["round"] == 7 and model.card["metrics"]["accuracy"] == 0.81
    assert model.card["validation"]["best"] is True and model.card["privacy"] == {"epsilon": 2.0}
    prob = model.predict_proba(
        [{"heart_rate": 80, "systolic_bp": 120, "diastolic_bp": 80, "spo2": 97}]
    )
    assert prob.shape == (1,) and 0.0 <= float(prob[0]) <= 1.0 and np.isfinite(prob).all()


@pytest.mark.django_db
def test_hosted_sites_report_validation_loss_and_the_best_version_is_recommended(
    make_site, make_dataset, make_experiment, drive
):
    """Through the services (hosted sites, in this process): each site's evaluation of
    each version carries its validation loss; the version's is the row-weighted mean;
    the finished experiment recommends the version with the lowest."""
    from aggregation import services
    from aggregation.services.sitework import site_plan

    datasets = [make_dataset(make_site(f"site-{i}"), rows=120, seed=i) for i in range(3)]
    experiment = make_experiment(datasets, num_rounds=3, validation_fraction=0.2)
    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED
    plan = site_plan(experiment, datasets[0].site, 1)
    assert plan.validation_fraction == 0.2 and plan.to_dict()["split"]["validation_fraction"] == 0.2
    versions = list(ModelVersion.objects.filter(experiment=experiment).order_by("version"))
    for v in versions:
        reported = [e.metrics for e in v.evaluations.all()]
        assert len(reported) == 3 and all(m["validation_n"] > 0 for m in reported)
        expected = sum(m["validation_loss"] * m["validation_n"] for m in reported) / sum(
            m["validation_n"] for m in reported
        )
        assert v.metrics["validation_loss"] == pytest.approx(expected)
        assert v.metrics["validation_sites"] == 3
    best = min(versions, key=lambda v: (v.metrics["validation_loss"], v.version))
    assert recommended_version(experiment, versions) == best


@pytest.mark.django_db
def test_every_door_takes_the_validation_fraction_within_its_bounds(make_site, make_dataset):
    from aggregation.services.creation import ExperimentInvalid, create_experiment

    dataset = make_dataset(make_site("site-v"), rows=120, seed=0)
    experiment = create_experiment(name="v", datasets=[dataset], validation_fraction=0.2)
    assert experiment.validation_fraction == 0.2
    assert experiment.federated_config().validation_fraction == 0.2
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="v2", datasets=[dataset], validation_fraction=0.6)
    assert "validation_fraction" in caught.value.errors
