"""Agents hold out the experiment's validation slice (issue 10): they never train on it,
report each version's loss on it with their evaluation, and the server's best-version
selection counts them exactly as it counts hosted sites."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.models import ClientUpdate, Experiment, ModelVersion
from aggregation.services import artifacts
from aggregation.services.recommend import recommended_version
from aggregation.services.selection import best_version
from fedhealth.agent.data import LocalData
from fedhealth.ml.federation import round_seed, split_site
from fedhealth.ml.model import init_weights
from fedhealth.ml.personalize import validation_split
from fedhealth.ml.sitework import evaluate_at_site
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.training import train_local
from fedhealth.ml.weights_io import sha256_hex, weights_to_bytes

from .test_agent_loop import make_agent, start

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


def test_agents_report_validation_loss_and_count_in_the_selection(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery
):
    paths = [agent_csv(site.slug, rows=200, seed=30 + i) for i, (site, _) in enumerate(agent_sites)]
    agents = [make_agent(live_server.url, token, path) for (_, token), path in zip(agent_sites, paths, strict=True)]
    experiment_id = start(client_for(charlie), [a.register() for a in agents], num_rounds=3, validation_fraction=0.2)

    for _ in range(8):
        for a in agents:
            a.run_once()

    experiment = Experiment.objects.get(pk=experiment_id)
    assert experiment.status == "completed", experiment.failure_reason
    versions = list(ModelVersion.objects.filter(experiment=experiment).order_by("version"))
    site, _ = agent_sites[0]
    data = LocalData.from_source(paths[0])
    split = split_site(site.slug, data.X, data.y, test_fraction=experiment.test_fraction, seed=experiment.seed)
    normalizer = Normalizer.from_dict(experiment.normalizer)
    for version in versions:
        assert version.metrics["validation_sites"] == 2
        stored = version.evaluations.get(site=site).metrics
        # The same core call a hosted worker makes, on the same slice.
        expected, _ = evaluate_at_site(
            experiment.model_config, artifacts.load_weights(version.weights_file, version.sha256),
            normalizer, split, validation_fraction=0.2, split_seed=experiment.seed,
        )
        assert stored["validation_n"] == expected["validation_n"] > 0
        assert stored["validation_loss"] == pytest.approx(expected["validation_loss"], rel=1e-6)
    chosen = best_version(versions)
    assert chosen is not None and recommended_version(experiment, versions) == chosen
    assert chosen.metrics["validation_loss"] == min(v.metrics["validation_loss"] for v in versions)

    # The agent trained on its training rows less the slice, as a hosted worker does.
    X_fit, y_fit, _, _ = validation_split(split.X_train, split.y_train, fraction=0.2, seed=experiment.seed)
    trained = train_local(
        experiment.model_config, init_weights(experiment.model_config, experiment.seed),
        normalizer.transform(X_fit), y_fit, experiment.train_config(round_seed(experiment.seed, 1, site.slug)),
    )
    update = ClientUpdate.objects.get(round__experiment=experiment, round__number=1, site=site)
    assert update.num_samples == len(y_fit) < len(split.y_train)
    assert update.sha256 == sha256_hex(weights_to_bytes(trained.weights))
    assert np.isfinite(update.metrics["accuracy"])
