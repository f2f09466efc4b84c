"""Site-level DP with secure aggregation on hosted sites: each site clips its change and
adds its noise share N(0, (z S)^2 / t) before masking; the server only unmasks the sum,
and the version is previous + (sum of clipped changes + the sites' noise) / m."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregation import services
from aggregation.models import Experiment, ModelVersion, Round
from aggregation.services import artifacts
from fedhealth.ml.privacy import clip_change, site_epsilon

from .test_secure_round import drive_secure, four_sites, kept  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

CLIP = 0.5


def _residual(experiment, kept_updates, m: int) -> tuple[np.ndarray, Round]:  # noqa: F811
    """(version - noise-free DP-FedAvg of the kept updates) * m: the noise on the sum."""
    round_ = Round.objects.get(experiment=experiment, number=1)
    previous, _ = artifacts.global_weights_for(round_)
    expected = {k: previous[k].astype(np.float64) for k in previous}
    for u in kept_updates:
        change, _ = clip_change(u.weights, previous, CLIP)
        for k in previous:
            expected[k] += change[k] / m
    version = ModelVersion.objects.get(experiment=experiment, version=1)
    got = artifacts.load_weights(version.weights_file, version.sha256)
    return np.concatenate([(got[k].astype(np.float64) - expected[k]).ravel() * m for k in previous]), round_


@pytest.mark.parametrize("silent", [None, {"site-3": "masked"}])
def test_the_sites_noise_shares_give_the_sum_its_calibrated_noise(
    four_sites, make_experiment, drive_secure, kept, silent  # noqa: F811
):
    experiment = make_experiment(four_sites, secure_aggregation=True, dp_mode="site", dp_epsilon=30.0,
                                 dp_clip_norm=CLIP, num_rounds=1, min_sites=3)
    services.start_experiment(experiment.pk)
    experiment = drive_secure(experiment.pk, silent=silent)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason

    reported = ["site-0", "site-1", "site-2"] if silent else [f"site-{i}" for i in range(4)]
    noise, round_ = _residual(experiment, [kept[(1, s)] for s in reported], m=4)
    figures = round_.metrics["site_dp"]
    t = round_.secure.threshold
    z = figures["noise_multiplier"]
    assert (figures["noise_added_by"], figures["denominator"], t) == ("sites", 4, 3)
    assert sorted(round_.metrics["accepted"]) == reported
    # Each reporting site added N(0, (z S)^2 / t): with t of them the calibrated (z S)^2.
    expected_std = z * CLIP * math.sqrt(len(reported) / t)
    assert np.std(noise) == pytest.approx(expected_std, rel=0.1)
    assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(noise.size)
    assert figures["epsilon"] == pytest.approx(site_epsilon(z, 1.0, 1, 1e-5))
    # Nothing in the clear: no update of a secure experiment is stored on the server's side.
    assert not round_.updates.exclude(weights_file="").exists()
