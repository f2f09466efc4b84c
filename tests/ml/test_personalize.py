"""Validation slices, best-round selection, early stopping and personalisation (core)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedhealth.ml.federation import FederatedConfig, best_round, run_experiment, split_site
from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.personalize import (
    HEAD_PREFIX,
    fit_early_stopping,
    validation_loss,
    validation_split,
    with_head,
)
from fedhealth.ml.sitework import SitePlan, evaluate_at_site, plan_site_round
from fedhealth.ml.stats import Normalizer, compute_stats
from fedhealth.ml.strategies import get_strategy
from fedhealth.ml.training import TrainConfig, train_local


def _rows(n: int, seed: int, positive: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive).astype(np.int64)
    X = rng.normal(size=(n, 3)) + y[:, None] * 1.5
    return X, y


def test_validation_split_is_seeded_stratified_and_disjoint():
    X, y = _rows(100, 0, positive=0.3)
    X_fit, y_fit, X_val, y_val = validation_split(X, y, fraction=0.2, seed=7)
    again = validation_split(X, y, fraction=0.2, seed=7)
    np.testing.assert_array_equal(X_val, again[2])
    assert len(y_val) == 20 and len(y_fit) == 80
    assert abs(y_val.mean() - y.mean()) < 0.06  # stratified
    rows = {tuple(r) for r in X_fit} | {tuple(r) for r in X_val}
    assert len(rows) == 100  # every row in exactly one part
    other = validation_split(X, y, fraction=0.2, seed=8)[2]
    assert not np.array_equal(X_val, other)


def test_validation_split_single_class_zero_fraction_and_errors():
    X, y = _rows(30, 1, positive=1.0)
    _, y_fit, _, y_val = validation_split(X, y, fraction=0.25, seed=0)
    assert set(y_val) == {1} and len(y_val) == 8 and len(y_fit) == 22
    _, y_fit, X_val, y_val = validation_split(X, y, fraction=0.0, seed=0)
    assert len(y_val) == 0 and X_val.shape == (0, 3) and len(y_fit) == 30
    with pytest.raises(ValueError, match="validation fraction"):
        validation_split(X, y, fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        validation_split(X[:1], y[:1], fraction=0.5, seed=0)


def test_fit_early_stopping_never_worsens_validation_loss():
    cfg = ModelConfig(n_features=3, hidden=(8,))
    X, y = _rows(80, 2)
    X_val, y_val = _rows(40, 3)
    start = init_weights(cfg, 0)
    # A huge learning rate diverges: the start (epoch 0) must be kept if nothing is better.
    for lr in (3e-3, 5.0):
        best, epoch = fit_early_stopping(
            cfg, start, X, y, X_val, y_val, TrainConfig(lr=lr), max_epochs=10, patience=2
        )
        assert validation_loss(cfg, best, X_val, y_val) <= validation_loss(cfg, start, X_val, y_val)
        assert 0 <= epoch <= 10
    tuned, epoch = fit_early_stopping(cfg, start, X, y, X_val, y_val, TrainConfig(), max_epochs=10)
    assert epoch > 0  # separable data: training helps


def test_train_local_anchor_pulls_toward_it():
    cfg = ModelConfig(n_features=3, hidden=(4,))
    X, y = _rows(64, 4)
    start, anchor = init_weights(cfg, 0), init_weights(cfg, 1)
    train = TrainConfig(epochs=5, proximal_mu=50.0, lr=1e-2)
    pulled = train_local(cfg, start, X, y, train, anchor=anchor).weights
    free = train_local(cfg, start, X, y, train).weights  # anchored at the start

    def dist(a, b):
        return sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)

    assert dist(pulled, anchor) < dist(free, anchor)
    assert dist(free, start) < dist(pulled, start)


def test_with_head_takes_only_the_output_layer():
    cfg = ModelConfig(n_features=3, hidden=(4,))
    body, head = init_weights(cfg, 0), init_weights(cfg, 1)
    mixed = with_head(body, head)
    for name in mixed:
        source = head if name.startswith(HEAD_PREFIX) else body
        np.testing.assert_array_equal(mixed[name], source[name])


def _sites(seed: int = 0):
    sites = []
    for i, positive in enumerate((0.2, 0.5, 0.8)):
        X, y = _rows(120, seed + i, positive)
        sites.append(split_site(f"s{i}", X, y, test_fraction=0.25, seed=seed))
    return sites


def test_run_experiment_selects_the_best_round_and_stops_early():
    cfg = FederatedConfig(
        rounds=12,
        model=ModelConfig(n_features=3, hidden=(8,)),
        validation_fraction=0.2,
        early_stopping=2,
        train=TrainConfig(lr=0.05),
    )
    run = run_experiment(_sites(), cfg)
    losses = [h.validation_loss for h in run.history]
    assert all(isinstance(v, float) and v > 0 for v in losses)
    assert run.selected_round == best_round(run.history) == 1 + int(np.argmin(losses))
    if len(run.history) < cfg.rounds:  # stopped: exactly `patience` rounds after the best
        assert len(run.history) - run.selected_round == 2
    # Without validation: no losses, the last round is the model.
    plain = run_experiment(
        _sites(), replace(cfg, validation_fraction=0.0, early_stopping=None, rounds=3)
    )
    assert [h.validation_loss for h in plain.history] == [None] * 3 and plain.selected_round == 3


def test_config_refuses_inconsistent_options():
    with pytest.raises(ValueError, match="early stopping needs"):
        FederatedConfig(early_stopping=3)
    with pytest.raises(ValueError, match="personalize must be one of"):
        FederatedConfig(personalize="magic")
    with pytest.raises(ValueError, match="validation fraction"):
        FederatedConfig(validation_fraction=1.5)


@pytest.mark.parametrize("mode", ["finetune", "ditto", "fedper"])
def test_every_mode_gives_each_site_a_model_no_worse_on_its_validation_slice(mode):
    cfg = FederatedConfig(
        rounds=4,
        model=ModelConfig(n_features=3, hidden=(8,)),
        validation_fraction=0.25,
        personalize=mode,
    )
    sites = _sites(1)
    run = run_experiment(sites, cfg)
    assert set(run.personal) == {s.name for s in sites}
    for site in sites:
        X_fit, y_fit, X_val, y_val = validation_split(
            site.X_train, site.y_train, fraction=0.25, seed=0
        )
        Xv = run.normalizer.transform(X_val)
        own = validation_loss(cfg.model, run.personal[site.name], Xv, y_val)
        if mode == "finetune":  # the global model is epoch 0 of the fine-tuning
            assert own <= validation_loss(cfg.model, run.weights, Xv, y_val) + 1e-9


def test_site_plan_carries_the_validation_fraction_and_evaluation_reports_it():
    X, y = _rows(100, 5)
    split = split_site("a", X, y, test_fraction=0.25, seed=3)
    normalizer = Normalizer.from_stats(compute_stats(split.X_train))
    common = dict(
        site="a",
        round_number=1,
        experiment_seed=3,
        model=ModelConfig(n_features=3, hidden=(4,)),
        train=TrainConfig(),
        strategy=get_strategy("fedavg"),
        normalizer=normalizer,
        test_fraction=0.25,
    )
    plan = plan_site_round(**common, validation_fraction=0.2)
    assert plan.to_dict()["split"]["validation_fraction"] == 0.2
    assert SitePlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
    assert "validation_fraction" not in plan_site_round(**common).to_dict()["split"]  # old agents
    weights = init_weights(plan.model, 0)
    metrics, _ = evaluate_at_site(
        plan.model, weights, normalizer, split, validation_fraction=0.2, split_seed=3
    )
    _, _, X_val, y_val = validation_split(split.X_train, split.y_train, fraction=0.2, seed=3)
    assert metrics["validation_n"] == len(y_val) == 15
    assert metrics["validation_loss"] == pytest.approx(
        validation_loss(plan.model, weights, normalizer.transform(X_val), y_val)
    )
    plain, _ = evaluate_at_site(plan.model, weights, normalizer, split)
    assert "validation_loss" not in plain
