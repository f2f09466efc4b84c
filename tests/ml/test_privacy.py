"""Record-level DP: accounting against Opacus, derived noise, DP-SGD's clipping and noise."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from sklearn.datasets import make_classification

from fedhealth.ml.model import ModelConfig, build_model, get_weights, init_weights, set_weights
from fedhealth.ml.privacy import (
    ALPHAS,
    PrivacySettings,
    RoundSpend,
    composed_epsilon,
    derive_noise,
    dp_optimizer,
    epsilon_for,
    plan_round_spend,
    poisson_batches,
    private_gradients,
    sample_rate,
    steps_per_round,
    train_local_dp,
)
from fedhealth.ml.training import TrainConfig, train_local


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_data(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=4, n_redundant=0, random_state=seed
    )
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


# -- accounting ---------------------------------------------------------------------


def test_reported_epsilon_equals_opacus_accountant_stepped_like_training() -> None:
    # Prepare: a round as a site of 3,000 rows runs it, accounted step by step by Opacus.
    settings = PrivacySettings(epsilon=3.0, rounds=5)
    rows, epochs, batch = 3000, 2, 32
    spend = plan_round_spend(settings, round_number=3, rows=rows, epochs=epochs, batch_size=batch)
    accountant = RDPAccountant()
    for _ in range(3 * steps_per_round(epochs, batch, rows)):
        accountant.step(noise_multiplier=spend.noise_multiplier, sample_rate=batch / rows)
    one_round = RDPAccountant()
    for _ in range(steps_per_round(epochs, batch, rows)):
        one_round.step(noise_multiplier=spend.noise_multiplier, sample_rate=batch / rows)

    # Assert: the same figures at the same delta and orders.
    assert spend.steps == 2 * 94 and spend.sample_rate == batch / rows
    assert spend.epsilon_total == pytest.approx(
        accountant.get_epsilon(delta=spend.delta, alphas=list(ALPHAS)), rel=1e-12
    )
    assert spend.epsilon == pytest.approx(
        one_round.get_epsilon(delta=spend.delta, alphas=list(ALPHAS)), rel=1e-12
    )
    # Opacus's own default orders give a looser bound, never a tighter one.
    assert spend.epsilon_total <= accountant.get_epsilon(delta=spend.delta) + 1e-12


@pytest.mark.parametrize(
    ("epsilon", "rows", "epochs", "batch", "rounds"),
    [(3.0, 3000, 2, 32, 10), (0.5, 5000, 1, 64, 20), (8.0, 800, 2, 32, 5), (1.0, 20, 1, 32, 3)],
)
def test_derived_noise_reaches_the_target_within_ten_percent(
    epsilon: float, rows: int, epochs: int, batch: int, rounds: int
) -> None:
    settings = PrivacySettings(epsilon=epsilon, rounds=rounds)

    noise = derive_noise(settings, rows=rows, epochs=epochs, batch_size=batch)
    steps = rounds * steps_per_round(epochs, batch, rows)
    reached = epsilon_for([(noise, sample_rate(batch, rows), steps)], settings.delta_for(rows))

    assert 0.9 * epsilon <= reached <= epsilon
    last = plan_round_spend(
        settings, round_number=rounds, rows=rows, epochs=epochs, batch_size=batch
    )
    assert last.epsilon_total == pytest.approx(reached, rel=1e-12)


def test_composition_across_experiments_is_the_accountant_over_all_rounds() -> None:
    a = PrivacySettings(epsilon=2.0, rounds=3)
    b = PrivacySettings(epsilon=4.0, rounds=2, delta=1e-5)
    spends = [
        *(
            plan_round_spend(a, round_number=r, rows=1000, epochs=1, batch_size=50)
            for r in (1, 2, 3)
        ),
        *(plan_round_spend(b, round_number=r, rows=1000, epochs=2, batch_size=50) for r in (1, 2)),
    ]
    accountant = RDPAccountant()
    for s in spends:
        for _ in range(s.steps):
            accountant.step(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate)

    total = composed_epsilon(spends)

    delta = max(s.delta for s in spends)
    assert delta == 1e-4  # the first experiment's default delta, 1 / (10 * 1000 rows)
    assert total == pytest.approx(accountant.get_epsilon(delta=delta, alphas=list(ALPHAS)))
    # Composition is sub-additive, but more than either experiment alone (same delta).
    first, second = composed_epsilon(spends[:3], delta), composed_epsilon(spends[3:], delta)
    assert max(first, second) < total < first + second
    assert RoundSpend.from_dict(spends[0].to_dict()) == spends[0]
    assert composed_epsilon([]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0}, "epsilon must be > 0, got 0"),
        ({"epsilon": -1.5}, "epsilon must be > 0, got -1.5"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number, got nan"),
        ({"clip_norm": 0}, "clip_norm must be > 0, got 0"),
        ({"clip_norm": -2.0}, "clip_norm must be > 0, got -2.0"),
        ({"delta": 1.0}, "delta must be in (0, 1), got 1.0"),
        ({"rounds": 0}, "rounds must be an int >= 1, got 0"),
    ],
)
def test_bad_settings_raise_naming_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        PrivacySettings(**kwargs)
    assert str(err.value) == message


def test_delta_must_be_below_one_over_the_sites_rows() -> None:
    settings = PrivacySettings(delta=1e-3)
    assert settings.delta_for(999) == 1e-3
    with pytest.raises(
        ValueError, match=r"delta must be below 1/rows = 0\.001 for a site of 1000 rows, got 0\.001"
    ):
        settings.delta_for(1000)
    with pytest.raises(ValueError, match="delta must be below 1/rows"):
        derive_noise(settings, rows=5000, epochs=1, batch_size=32)
    assert PrivacySettings().delta_for(2000) == pytest.approx(1 / 20000)
    assert PrivacySettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match=r"unknown privacy settings keys: \['sigma'\]"):
        PrivacySettings.from_dict({"sigma": 1})


# -- the mechanism ------------------------------------------------------------------


def test_noise_zero_and_huge_clip_equals_plain_adam_on_the_same_batches() -> None:
    # Prepare: the DP trainer with no noise and a clip no gradient reaches, and a plain
    # replay of the same Poisson batches (same generator seed) with the same Adam.
    X, y = make_data()
    cfg = ModelConfig(n_features=6, hidden=(16, 8))
    start = init_weights(cfg, seed=3)
    train = TrainConfig(epochs=2, batch_size=40, lr=1e-2, lr_schedule="constant")

    dp = train_local_dp(
        cfg, start, X, y, train, noise_multiplier=0.0, clip_norm=1e9, secret_seed=11
    )

    model = build_model(cfg)
    set_weights(model, start)
    model.train()
    adam = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    x_all, y_all = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    n, generator = len(X), torch.Generator().manual_seed(11)
    per_epoch = steps_per_round(1, train.batch_size, n)
    for _ in range(train.epochs):
        for idx in poisson_batches(n, train.batch_size / n, per_epoch, generator):
            adam.zero_grad()
            loss = F.binary_cross_entropy_with_logits(
                model(x_all[idx]), y_all[idx], reduction="sum"
            )
            (loss / train.batch_size).backward()  # DP-SGD divides by the expected batch size
            adam.step()

    # Assert: the same weights up to float summation order, and a real change from start.
    plain = get_weights(model)
    for key in plain:
        np.testing.assert_allclose(dp.weights[key], plain[key], rtol=0, atol=2e-5)
    assert max(float(np.abs(plain[k] - start[k]).max()) for k in plain) > 0.05


def _one_private_gradient(noise: float, clip: float, seed: int) -> dict[str, torch.Tensor]:
    X, y = make_data(n=64)
    cfg = ModelConfig(n_features=6, hidden=(64, 32))
    model = build_model(cfg)
    set_weights(model, init_weights(cfg, seed=1))
    private = GradSampleModule(model, loss_reduction="sum")
    optimizer = dp_optimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise,
        clip,
        32,
        torch.Generator().manual_seed(seed),
    )
    private_gradients(
        private, optimizer, torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    )
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    private.remove_hooks()
    return grads


def test_rows_are_clipped_and_noise_has_the_expected_scale() -> None:
    # Prepare: 64 rows, expected batch 32, clip 0.1 (every row is clipped).
    sigma, clip = 2.0, 0.1
    clean = _one_private_gradient(0.0, clip, seed=0)
    noisy = _one_private_gradient(sigma, clip, seed=0)

    # Assert: the clipped mean's norm is at most rows * clip / expected batch.
    norm = math.sqrt(sum(float((g**2).sum()) for g in clean.values()))
    assert 0 < norm <= 64 * clip / 32 + 1e-6
    # The difference is the noise alone: N(0, (sigma * clip / 32)^2) per coordinate.
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])
    assert diff.numel() > 2000
    expected = sigma * clip / 32
    assert float(diff.std()) == pytest.approx(expected, rel=0.06)
    assert abs(float(diff.mean())) < 4 * expected / math.sqrt(diff.numel())


def test_dp_training_with_noise_differs_from_without_by_its_scale_and_still_learns() -> None:
    X, y = make_data(n=600)
    cfg = ModelConfig(n_features=6, hidden=(16,))
    start = init_weights(cfg, seed=0)
    train = TrainConfig(epochs=5, batch_size=30, lr=1e-2)

    a = train_local_dp(cfg, start, X, y, train, noise_multiplier=1.0, clip_norm=1.0, secret_seed=1)
    b = train_local_dp(cfg, start, X, y, train, noise_multiplier=1.0, clip_norm=1.0, secret_seed=1)
    c = train_local_dp(cfg, start, X, y, train, noise_multiplier=1.0, clip_norm=1.0, secret_seed=2)
    plain = train_local(cfg, start, X, y, train)

    for key in a.weights:  # the same secret seed replays exactly
        np.testing.assert_array_equal(a.weights[key], b.weights[key])
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)
    assert a.num_samples == 600 and math.isfinite(a.loss)
    assert a.metrics["accuracy"] > 0.65  # 0.5 at the start; 0.80 without DP
    assert plain.metrics["accuracy"] >= a.metrics["accuracy"] - 0.1


def test_empty_poisson_batches_still_add_noise() -> None:
    # 5 rows, batch 1: each step samples each row with p=0.2, so many steps are empty.
    X, y = make_data(n=5)
    cfg = ModelConfig(n_features=6, hidden=())
    start = init_weights(cfg, seed=0)
    batches = poisson_batches(5, 0.2, 50, torch.Generator().manual_seed(4))
    assert any(len(b) == 0 for b in batches)

    moved = train_local_dp(
        cfg,
        start,
        X,
        y,
        TrainConfig(epochs=10, batch_size=1),
        noise_multiplier=1.0,
        clip_norm=1.0,
        secret_seed=4,
    )
    assert all(np.isfinite(w).all() for w in moved.weights.values())


def test_bad_mechanism_arguments_raise() -> None:
    X, y = make_data(n=10)
    cfg = ModelConfig(n_features=6, hidden=())
    with pytest.raises(ValueError, match="clip_norm must be > 0, got 0"):
        train_local_dp(
            cfg, init_weights(cfg, 0), X, y, TrainConfig(), noise_multiplier=1.0, clip_norm=0.0
        )
    with pytest.raises(ValueError, match="noise_multiplier must be finite and >= 0, got -1"):
        train_local_dp(
            cfg, init_weights(cfg, 0), X, y, TrainConfig(), noise_multiplier=-1.0, clip_norm=1.0
        )


# -- the site-work contract -----------------------------------------------------------


def test_site_plan_carries_the_request_and_the_site_derives_its_own_noise() -> None:
    from fedhealth.ml.federation import split_site
    from fedhealth.ml.sitework import SitePlan, plan_site_round, privacy_spend, train_at_site
    from fedhealth.ml.stats import Normalizer, compute_stats
    from fedhealth.ml.strategies import get_strategy

    X, y = make_data(n=500)
    split = split_site("north", X, y, test_fraction=0.2, seed=0)
    cfg = ModelConfig(n_features=6, hidden=(8,))
    common = dict(
        site="north",
        round_number=2,
        experiment_seed=5,
        model=cfg,
        train=TrainConfig(),
        strategy=get_strategy("fedavg"),
        normalizer=Normalizer.from_stats(compute_stats(split.X_train)),
        test_fraction=0.2,
    )
    plain = plan_site_round(**common)
    private = plan_site_round(
        **common, privacy=PrivacySettings(epsilon=2.0, clip_norm=0.5, rounds=4)
    )

    assert "privacy" not in plain.to_dict()
    assert SitePlan.from_dict(plain.to_dict()).to_dict() == plain.to_dict()
    assert SitePlan.from_dict(private.to_dict()).privacy == private.privacy
    assert privacy_spend(plain, split) is None
    spend = privacy_spend(private, split)
    assert spend is not None and spend.round == 2 and spend.clip_norm == 0.5
    assert spend.delta == pytest.approx(1 / (10 * 400))  # the site's own 400 training rows
    assert spend.epsilon_total <= 2.0 * 2 / 4 + 0.5  # half-way through the experiment's budget

    start = init_weights(cfg, 0)
    a = train_at_site(private, start, split, spend=spend, secret_seed=9)
    b = train_at_site(private, start, split, spend=spend, secret_seed=9)
    c = train_at_site(plain, start, split)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)
    assert set(a.metrics) == set(c.metrics)
