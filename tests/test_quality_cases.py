"""The claims docs/quality.md makes, on a fast configuration of its three cases.

On each case (bench/quality_cases.py; one seed, 12 rounds): the federated model beats
every site training alone on the mean balanced accuracy over the sites' own test rows
(on accuracy it need not: on the generated sites, whose label balance differs widely, a
site alone predicting its majority class scores higher accuracy), and no site's
personalised model is more than 2 points of accuracy below what the site reaches alone.
The default personalised models beat the federated one on the mean accuracy where the sites differ in what predicts the label (breast cancer's referral centre
and clinic, the generated sites' shifted vitals); on diabetes by age quartile, where
the sites differ in who they see but not in how the label follows from the features,
the federated model is already the right one for every site and personalisation only
stays within 4 points of it (docs/quality.md has the 5-seed figures). The full
measurement (5 seeds, 20 rounds, every mode) is bench/bench_quality.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.quality_cases import CASES
from fedhealth.ml.comparison import evaluate_alone, evaluate_personal
from fedhealth.ml.federation import FederatedConfig, evaluate_sites, run_experiment
from fedhealth.ml.metrics import mean_metrics
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.personalize import DEFAULT_PERSONALIZE


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Diabetes's sites test on ~33 rows each (one row is 3 points of accuracy): its
# per-site claims are made on the mean over three seeds, as docs/quality.md's over five.
SEEDS = {"diabetes": (0, 1, 2)}


def _figures(case: str) -> dict:
    runs = [_run(case, seed) for seed in SEEDS.get(case, (0,))]
    figures = {}
    for option in runs[0]:
        per_site = {
            site: {
                metric: _mean_defined([run[option]["per_site"][site][metric] for run in runs])
                for metric in ("accuracy", "balanced_accuracy", "auroc")
            }
            for site in runs[0][option]["per_site"]
        }
        figures[option] = {"per_site": per_site, "mean": mean_metrics(list(per_site.values()))}
    return figures


def _mean_defined(values: list[float]) -> float:
    """Mean over the seeds where the metric is defined (NaN: n/a at that site)."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _run(case: str, seed: int) -> dict:
    schema, sites = CASES[case](seed)
    config = FederatedConfig(
        rounds=12,
        model=ModelConfig(n_features=len(schema.features)),
        seed=seed,
        validation_fraction=0.2,
    )
    federated = run_experiment(sites, config)
    personal = run_experiment(sites, replace(config, personalize=DEFAULT_PERSONALIZE))
    return {
        "alone": evaluate_alone(sites, config),
        "federated": evaluate_sites(config.model, federated.weights, federated.normalizer, sites),
        "personalized": evaluate_personal(
            config.model, personal.personal, personal.normalizer, sites
        ),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_federation_helps_and_personalisation_helps_more_without_hurting_a_site(case):
    figures = _figures(case)
    balanced = {option: figures[option]["mean"]["balanced_accuracy"] for option in figures}
    assert balanced["federated"] > balanced["alone"], balanced
    mean = {option: figures[option]["mean"]["accuracy"] for option in figures}
    if case == "diabetes":
        assert (
            mean["personalized"] > mean["alone"]
            and mean["personalized"] >= mean["federated"] - 0.04
        ), mean
    else:
        assert mean["personalized"] > mean["federated"], mean
    for site, alone in figures["alone"]["per_site"].items():
        own = figures["personalized"]["per_site"][site]
        assert own["accuracy"] >= alone["accuracy"] - 0.02, (
            site,
            own["accuracy"],
            alone["accuracy"],
        )


def test_the_single_class_site_works_end_to_end_in_the_core():
    """The referral centre (malignant cases only) trains, validates and is scored:
    accuracy defined, AUROC undefined (NaN) at that site and left out of the mean."""
    figures = _figures("breast_cancer")
    referral = figures["personalized"]["per_site"]["referral"]
    assert 0.0 <= referral["accuracy"] <= 1.0
    assert referral["auroc"] != referral["auroc"]  # NaN: one class in its test rows
    assert figures["personalized"]["mean"]["auroc"] == pytest.approx(
        sum(figures["personalized"]["per_site"][s]["auroc"] for s in ("clinic", "hospital")) / 2
    )
