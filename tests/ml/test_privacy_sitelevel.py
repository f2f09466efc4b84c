"""Site-level DP (DP-FedAvg, fedhealth.ml.privacy.sitelevel): clipping, noise, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedhealth.ml.privacy import (
    ALPHAS,
    SiteDPSettings,
    clip_change,
    dp_fedavg,
    site_epsilon,
    site_share,
)
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update


def _weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "a.weight": (rng.normal(size=(8, 4)) * scale).astype(np.float32),
        "a.bias": (rng.normal(size=8) * scale).astype(np.float32),
    }


def _norm(change: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in change.values()))


def test_clip_change_bounds_the_norm_and_keeps_small_changes():
    rng = np.random.default_rng(0)
    ref = _weights(rng)
    big = {k: v + 50 for k, v in ref.items()}
    change, before = clip_change(big, ref, 2.0)
    assert before > 100
    assert _norm(change) == pytest.approx(2.0, rel=1e-9)
    small = {k: v + np.float32(1e-3) for k, v in ref.items()}
    change, before = clip_change(small, ref, 2.0)
    np.testing.assert_allclose(change["a.bias"], small["a.bias"].astype(np.float64) - ref["a.bias"], rtol=1e-12)


def test_an_attacker_site_moves_the_model_by_at_most_clip_over_the_denominator():
    # Prepare: three honest sites leave the model unchanged; one sends an enormous update.
    rng = np.random.default_rng(1)
    previous = _weights(rng)
    honest = [Update({k: v.copy() for k, v in previous.items()}, 100, f"h{i}") for i in range(3)]
    attacker = Update({k: v + np.float32(9000) for k, v in previous.items()}, 10**6, "evil")
    # Execute
    result = dp_fedavg(previous, [*honest, attacker], clip_norm=1.5, noise_multiplier=0.0,
                       denominator=4, rng=np.random.default_rng(2))
    # Assert: the attacker's whole pull is S / m, whatever its size or claimed rows.
    moved = {k: result.weights[k].astype(np.float64) - previous[k] for k in previous}
    assert _norm(moved) == pytest.approx(1.5 / 4, rel=1e-5)
    # Plain FedAvg would have been dragged almost all the way to the attacker.
    plain = FedAvg().aggregate(previous, [*honest, attacker])
    assert _norm({k: plain.weights[k].astype(np.float64) - previous[k] for k in previous}) > 1000


def test_with_noise_the_attacker_moves_the_model_by_at_most_clip_over_m_plus_the_noise():
    rng = np.random.default_rng(3)
    previous = _weights(rng)
    honest = [Update({k: v.copy() for k, v in previous.items()}, 100, f"h{i}") for i in range(3)]
    attacker = Update({k: v + np.float32(9000) for k, v in previous.items()}, 100, "evil")
    z, clip, m = 2.0, 1.0, 4
    with_attacker = dp_fedavg(previous, [*honest, attacker], clip_norm=clip, noise_multiplier=z,
                              denominator=m, rng=np.random.default_rng(7))
    without = dp_fedavg(previous, honest, clip_norm=clip, noise_multiplier=z,
                        denominator=m, rng=np.random.default_rng(7))
    # Same noise draw: the two models differ by exactly the attacker's clipped change / m.
    diff = {k: with_attacker.weights[k].astype(np.float64) - without.weights[k] for k in previous}
    assert _norm(diff) == pytest.approx(clip / m, rel=1e-4)
    # And the noise itself has standard deviation z * S / m per coordinate.
    noise = np.concatenate([(without.weights[k].astype(np.float64) - previous[k]).ravel() for k in previous])
    assert np.std(noise) == pytest.approx(z * clip / m, rel=0.25)


def test_noise_zero_equals_clipped_fedavg_and_large_clip_equals_fedavg():
    rng = np.random.default_rng(4)
    previous = _weights(rng)
    updates = [Update({k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in previous.items()}, 50, f"s{i}")
               for i in range(4)]
    clip = 0.8
    result = dp_fedavg(previous, updates, clip_norm=clip, noise_multiplier=0.0, denominator=4,
                       rng=np.random.default_rng(0))
    expected = {k: previous[k].astype(np.float64) for k in previous}
    for u in updates:
        change, _ = clip_change(u.weights, previous, clip)
        for k in previous:
            expected[k] += change[k] / 4
    for k in previous:
        np.testing.assert_allclose(result.weights[k], expected[k], rtol=1e-6, atol=1e-6)
    # A clip that clips nothing, equal row counts and m = reporters: plain FedAvg.
    loose = dp_fedavg(previous, updates, clip_norm=1e6, noise_multiplier=0.0, denominator=4,
                      rng=np.random.default_rng(0))
    plain = FedAvg().aggregate(previous, updates)
    for k in previous:
        np.testing.assert_allclose(loose.weights[k], plain.weights[k], rtol=1e-5, atol=1e-6)
    assert loose.accepted == ["s0", "s1", "s2", "s3"]


def test_fixed_denominator_a_dropout_does_not_rescale():
    rng = np.random.default_rng(5)
    previous = _weights(rng)
    same = {k: v + np.float32(0.01) for k, v in previous.items()}
    updates = [Update(same, 10, f"s{i}") for i in range(3)]  # one of m = 4 dropped out
    result = dp_fedavg(previous, updates, clip_norm=100.0, noise_multiplier=0.0, denominator=4,
                       rng=np.random.default_rng(0))
    np.testing.assert_allclose(result.weights["a.bias"], previous["a.bias"] + 0.0075, atol=1e-6)


def test_accountant_matches_opacus_rdp_directly():
    for z, q, rounds, delta in [(1.1, 1.0, 20, 1e-5), (0.9, 0.1, 200, 1e-6), (5.0, 0.5, 10, 1e-3)]:
        accountant = RDPAccountant()
        for _ in range(rounds):
            accountant.step(noise_multiplier=z, sample_rate=q)
        expected = accountant.get_epsilon(delta=delta, alphas=list(ALPHAS))
        assert site_epsilon(z, q, rounds, delta) == pytest.approx(expected, rel=1e-9)


def test_derived_noise_reaches_the_target_within_ten_percent():
    for settings in [SiteDPSettings(epsilon=3, rounds=20, sites=4),
                     SiteDPSettings(epsilon=1, rounds=50, sites=100, per_round=10, delta=1e-6)]:
        spend = settings.spend(settings.rounds)
        assert 0.9 * settings.epsilon <= spend.epsilon <= settings.epsilon
        assert spend.sample_rate == settings.per_round / settings.sites if settings.per_round else spend.sample_rate == 1.0
        assert spend.denominator == (settings.per_round or settings.sites)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0}, "epsilon must be > 0"),
        ({"epsilon": -1}, "epsilon must be > 0"),
        ({"delta": 0.0}, "delta must be above 0"),
        ({"delta": 0.3, "sites": 4}, "below 1/sites = 0.25"),
        ({"clip_norm": 0}, "clip_norm must be > 0"),
        ({"sites": 2}, "at least 3 sites"),
        ({"sites": 4, "per_round": 5}, "per_round must be"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SiteDPSettings(**{"sites": 4, **kwargs})


def test_site_shares_carry_the_calibrated_noise_over_the_threshold():
    rng = np.random.default_rng(6)
    reference = {"w": np.zeros(20000, dtype=np.float32)}
    z, clip, t = 1.5, 2.0, 3
    shares = [site_share(reference, reference, clip_norm=clip, noise_multiplier=z, threshold=t,
                         rng=np.random.default_rng(100 + i)) for i in range(t)]
    total = sum(s["w"] for s in shares)
    assert np.std(total) == pytest.approx(z * clip, rel=0.03)
    # Each share alone carries only 1/sqrt(t) of it, and the change itself is clipped.
    assert np.std(shares[0]["w"]) == pytest.approx(z * clip / math.sqrt(t), rel=0.03)
    big = {"w": np.full(20000, 5.0, dtype=np.float32)}
    clipped = site_share(big, reference, clip_norm=clip, noise_multiplier=0.0, threshold=t, rng=rng)
    assert _norm(clipped) == pytest.approx(clip, rel=1e-9)



def _secure(updates, previous, *, z, clip, m, dropout=0.0, seed=0):
    from fedhealth.ml.privacy import secure_dp_fedavg
    from fedhealth.ml.secagg import RoundContext
    from fedhealth.ml.secagg.federated import SecureOptions

    rngs = {u.site: np.random.default_rng([seed, i]) for i, u in enumerate(updates)}
    return secure_dp_fedavg(previous, updates, clip_norm=clip, noise_multiplier=z, denominator=m,
                            options=SecureOptions(dropout=dropout), ctx=RoundContext("t", 1), seed=seed,
                            site_rngs=rngs)


def test_secure_dp_fedavg_without_noise_equals_the_servers_dp_fedavg():
    rng = np.random.default_rng(8)
    previous = _weights(rng)
    updates = [Update({k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in previous.items()}, 50, f"s{i}")
               for i in range(4)]
    secure, dropped = _secure(updates, previous, z=0.0, clip=0.7, m=4)
    plain = dp_fedavg(previous, updates, clip_norm=0.7, noise_multiplier=0.0, denominator=4,
                      rng=np.random.default_rng(0))
    assert dropped == [] and sorted(secure.accepted) == ["s0", "s1", "s2", "s3"]
    for k in previous:
        np.testing.assert_allclose(secure.weights[k], plain.weights[k], atol=1e-5)


def test_secure_dp_fedavg_sum_carries_the_calibrated_noise_from_threshold_sites():
    previous = {"w": np.zeros(30000, dtype=np.float32)}
    updates = [Update({"w": previous["w"].copy()}, 10, f"s{i}") for i in range(3)]  # no change: noise only
    z, clip, m = 1.2, 0.5, 3  # threshold: a majority of 3 sites, 2
    result, _ = _secure(updates, previous, z=z, clip=clip, m=m)
    summed = result.weights["w"].astype(np.float64) * m
    # Three shares of variance (z S)^2 / 2: more than calibrated, never less.
    assert np.std(summed) == pytest.approx(z * clip * math.sqrt(3 / 2), rel=0.03)
    # With one site dropped, the two left (the threshold) carry exactly the calibrated noise.
    result, dropped = _secure(updates, previous, z=z, clip=clip, m=m, dropout=0.4, seed=3)
    assert len(dropped) == 1, dropped
    summed = result.weights["w"].astype(np.float64) * m
    assert np.std(summed) == pytest.approx(z * clip, rel=0.03)


def test_a_site_checks_the_servers_noise_request_against_its_own_target_at_rate_1():
    from fedhealth.ml.privacy import checked_share_request, secure_coordinate_bound

    needed = SiteDPSettings(epsilon=4.0, delta=1e-5, clip_norm=0.5, rounds=5, sites=10).noise_multiplier()
    # A server that claims a 1-in-10 selection derives less noise; a site cannot see the
    # selection, so it counts on sampling rate 1 and refuses it.
    amplified = SiteDPSettings(epsilon=4.0, delta=1e-5, clip_norm=0.5, rounds=5, sites=10, per_round=1)
    assert amplified.noise_multiplier() < needed
    wide = secure_coordinate_bound(0.5, 10 * needed, 3)
    target = {"epsilon": 4.0, "delta": 1e-5, "rounds": 5, "threshold": 3, "coordinate_bound": wide}
    assert checked_share_request(
        {"noise_multiplier": needed, "clip_norm": 0.5, "threshold": 3}, **target
    ) == (needed, 0.5)
    more = checked_share_request({"noise_multiplier": 2 * needed, "clip_norm": 0.7, "threshold": 3}, **target)
    assert more == (2 * needed, 0.7)  # more noise, or another clip at the same z, is as private
    refusals = [
        ({"noise_multiplier": amplified.noise_multiplier(), "clip_norm": 0.5, "threshold": 3},
         "needs at least"),
        ({"noise_multiplier": needed, "clip_norm": 0.5, "threshold": 4}, "threshold 4"),
        ({"noise_multiplier": needed, "clip_norm": 0.0, "threshold": 3}, "not usable"),
        ({"noise_multiplier": needed, "threshold": 3}, "lacks a usable"),
    ]
    for request, words in refusals:
        with pytest.raises(ValueError, match=words):
            checked_share_request(request, **target)
    # A range too narrow for the share's tails would clamp the noise away at the encoding.
    with pytest.raises(ValueError, match="would clamp the noise"):
        checked_share_request(
            {"noise_multiplier": needed, "clip_norm": 0.5, "threshold": 3},
            **{**target, "coordinate_bound": 0.5},
        )
