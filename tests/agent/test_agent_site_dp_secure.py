"""Site-level DP with secure aggregation and agent sites, against a live (in-process) server:
each agent clips its change and adds its noise share N(0, (z S)^2 / t) on its own machine
before masking, as hosted sites do, so the version's noise on the sum has the calibrated
deviation in a round mixing hosted sites and agents; and an agent refuses a task whose
noise is below what the target it agreed to needs (or that asks for no noise), with the
reason, sending nothing."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from aggregation.models import Experiment, ModelVersion, Round
from aggregation.services import artifacts
from aggregation.services.lifecycle import start_experiment
from clients.models import Dataset
from fedhealth.agent.data import LocalData
from fedhealth.agent.loop import SiteAgent
from fedhealth.ml.privacy import SiteDPSettings, clip_change

from .test_agent_secure import LyingServer, _secure, _until, drive, kept  # noqa: F401  (fixture)

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)

CLIP = 0.5


@pytest.fixture
def hybrid(make_site, make_dataset, agent_csv, tmp_path, live_server):
    """Two hosted sites and two agents (whose server answers a test may forge)."""
    from clients.models import ApiToken

    datasets = [make_dataset(make_site(f"hosted-{i}"), rows=260, seed=40 + i) for i in range(2)]
    agents = []
    for i in range(2):
        site = make_site(f"remote-{i}", mode="agent")
        token = ApiToken.issue(site=site, name="agent")[1]
        agent = SiteAgent(
            LyingServer(live_server.url, token, retries=1, backoff=0.01),
            LocalData.from_source(agent_csv(site.slug, rows=240, seed=50 + i)),
            state_dir=tmp_path / site.slug,
        )
        datasets.append(Dataset.objects.get(pk=agent.register()))
        agents.append(agent)
    return agents, datasets


def _experiment(make_experiment, datasets) -> Experiment:
    experiment = make_experiment(
        datasets, num_rounds=1, min_sites=4, secure_aggregation=True, dp_mode="site",
        dp_epsilon=30.0, dp_clip_norm=CLIP,
    )
    start_experiment(experiment.pk)
    return experiment


def test_agents_add_their_noise_shares_and_the_sum_carries_the_calibrated_noise(
    hybrid, make_experiment, eager_celery, kept, caplog  # noqa: F811
):
    agents, datasets = hybrid
    caplog.set_level(logging.INFO, logger="fedhealth.agent")
    experiment = drive(agents, _experiment(make_experiment, datasets).pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason

    round_ = Round.objects.get(experiment=experiment, number=1)
    figures, t = round_.metrics["site_dp"], round_.secure.threshold
    z = figures["noise_multiplier"]
    assert (figures["noise_added_by"], figures["denominator"], t) == ("sites", 4, 3)
    slugs = [d.site.slug for d in datasets]
    assert sorted(round_.metrics["accepted"]) == sorted(slugs)
    # The server's z is the one each agent derived itself at q = 1 (every site every round).
    assert z == pytest.approx(SiteDPSettings(epsilon=30.0, clip_norm=CLIP, rounds=1, sites=4).noise_multiplier())

    # The version less the noise-free DP-FedAvg of the kept updates, times m: the noise on
    # the sum. Four sites each added N(0, (z S)^2 / t): (z S)^2 * 4 / 3. Without the
    # agents' shares it would be (z S)^2 * 2 / 3, 29% less deviation.
    previous, _ = artifacts.global_weights_for(round_)
    expected = {k: previous[k].astype(np.float64) for k in previous}
    for slug in slugs:
        change, _ = clip_change(kept[(1, slug)].weights, previous, CLIP)
        for k in previous:
            expected[k] += change[k] / 4
    version = ModelVersion.objects.get(experiment=experiment, version=1)
    got = artifacts.load_weights(version.weights_file, version.sha256)
    noise = np.concatenate([(got[k].astype(np.float64) - expected[k]).ravel() * 4 for k in previous])
    expected_std = z * CLIP * math.sqrt(4 / t)
    assert np.std(noise) == pytest.approx(expected_std, rel=0.1)
    assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(noise.size)
    assert caplog.text.count("added its noise share") == 2  # each agent, on its own machine
    assert not round_.updates.exclude(weights_file="").exists()  # nothing in the clear


def test_an_agent_refuses_less_noise_than_its_target_needs_and_sends_nothing(
    hybrid, make_experiment, eager_celery, caplog
):
    agents, datasets = hybrid
    experiment = _experiment(make_experiment, datasets)
    _until(agents, lambda: (s := _secure(experiment.pk, 1)) is not None and s.phase == "masked")
    rid = Round.objects.get(experiment=experiment, number=1).pk
    liar = agents[0]
    honest = liar.client.get_json(f"/agent/rounds/{rid}/secure/")
    request = honest["task"]["site_dp"]
    needed = SiteDPSettings(epsilon=30.0, clip_norm=CLIP, rounds=1, sites=4).noise_multiplier()
    assert request["noise_multiplier"] == pytest.approx(needed)
    assert (request["clip_norm"], request["threshold"], request["denominator"]) == (CLIP, 3, 4)

    def forged(**change):
        task = {k: v for k, v in honest["task"].items() if k != "site_dp"}
        if change:
            task["site_dp"] = {**request, **change}
        liar.client.forged = {**honest, "task": task}
        liar.secure.step({"round": rid}, "remote-0")
        liar.secure._refused.clear()  # as after a restart: asked again, it checks again

    cases = [
        ({"noise_multiplier": request["noise_multiplier"] * 0.9},
         f"the server asks for noise multiplier {request['noise_multiplier'] * 0.9:.4g}; the target "
         f"this site agreed to (epsilon 30, delta 1e-05 over 1 rounds) needs at least {needed:.4g} "
         "at sampling rate 1"),
        ({}, "the server's task asks for no noise share"),
        ({"threshold": 4}, "the noise request is for threshold 4, but this site's protocol shares "
                           "its secrets under threshold 3"),
    ]
    for change, reason in cases:
        caplog.clear()
        forged(**change)
        assert "refused the server's masked-input task (site-level DP)" in caplog.text
        assert reason in caplog.text, caplog.text
        # nothing was sent: the site still owes its masked input
        assert _secure(experiment.pk, 1).sites.get(site__slug="remote-0").last_phase == "share"
    liar.client.forged = None

    # The honest request gets its answer, and the round completes with every site.
    experiment = drive(agents, experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    accepted = Round.objects.get(pk=rid).metrics["accepted"]
    assert sorted(accepted) == sorted(d.site.slug for d in datasets)
