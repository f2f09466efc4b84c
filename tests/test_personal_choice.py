"""The end-of-experiment personalised model (``fedhealth.ml.comparison.choose_personal``):
the global model is kept, and labelled so, when the site's validation slice does not
favour a personalised one; a gain carried by one row of a small slice is not evidence
(``improves_beyond_noise``); a single-class site keeps the global model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhealth.ml.comparison import choose_personal, compare_at_site
from fedhealth.ml.config import PERSONALIZE_MODES, FederatedConfig
from fedhealth.ml.federation import site_slices, split_site
from fedhealth.ml.model import ModelConfig, build_model, get_weights
from fedhealth.ml.personalize import fit_early_stopping, improves_beyond_noise, t_quantile
from fedhealth.ml.stats import Normalizer, compute_stats


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(rounds: int = 3) -> FederatedConfig:
    return FederatedConfig(rounds=rounds, model=ModelConfig(n_features=4), seed=0, validation_fraction=0.2)


def _global(config: FederatedConfig):
    torch.manual_seed(0)
    return get_weights(build_model(config.model))


def _same(a, b) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_t_quantile_matches_the_tables():
    # Student's t, one-sided 95%: 6.314 (1 df), 2.920 (2), 2.353 (3), 1.895 (7), 1.697 (30).
    for df, expected in ((1, 6.3138), (2, 2.9200), (3, 2.3534), (7, 1.8946), (30, 1.6973)):
        assert t_quantile(0.95, df) == pytest.approx(expected, abs=2e-3)


def test_a_gain_carried_by_one_row_is_noise_a_consistent_gain_is_not():
    current = np.array([0.01, 0.0, 0.002, 0.001, 0.0, 0.003, 0.0, 0.2])
    one_row = current.copy()
    one_row[-1] = 0.05  # the mean loss falls by 4x, all of it on one row
    assert one_row.mean() < current.mean() / 3
    assert not improves_beyond_noise(current, one_row)
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 40)
    assert improves_beyond_noise(base, base - rng.uniform(0.05, 0.15, 40))
    assert not improves_beyond_noise(base, base + 0.01)
    assert not improves_beyond_noise([0.5], [0.1])  # one row: no noise estimate, keep
    assert not improves_beyond_noise([0.5, 0.4], [0.1, float("nan")])


def _contrary(n_fit: int = 80, n_val: int = 20, seed: int = 0):
    """Fit rows labelled by x0 > 0, validation rows by x0 < 0: any step on the fit rows
    makes the validation loss worse."""
    rng = np.random.default_rng(seed)
    X_fit = rng.normal(size=(n_fit, 4)).astype(np.float32)
    X_val = rng.normal(size=(n_val, 4)).astype(np.float32)
    return X_fit, (X_fit[:, 0] > 0).astype(np.int64), X_val, (X_val[:, 0] < 0).astype(np.int64)


@pytest.mark.parametrize("mode", PERSONALIZE_MODES)
def test_the_global_model_is_kept_and_labelled_when_fine_tuning_does_not_help(mode):
    config = _config()
    X_fit, y_fit, X_val, y_val = _contrary()
    # A global model already fitted to the fit rows: every further step on them makes it
    # surer of answers the validation slice calls wrong.
    start, _ = fit_early_stopping(
        config.model, _global(config), X_fit, y_fit, X_val[:0], y_val[:0], config.train, max_epochs=30
    )
    choice = choose_personal(config, mode, start, X_fit, y_fit, X_val, y_val)
    assert choice.chosen == "global"
    assert choice.epochs == 0
    assert _same(choice.weights, start)


@pytest.mark.parametrize("mode", PERSONALIZE_MODES)
def test_a_single_class_site_never_trains_the_shared_body(mode):
    config = _config()
    start = _global(config)
    X_fit, _, X_val, _ = _contrary()
    choice = choose_personal(config, mode, start, X_fit, np.ones(len(X_fit), np.int64), X_val, np.ones(len(X_val), np.int64))
    assert choice.chosen == "head"
    assert all(np.array_equal(choice.weights[k], start[k]) for k in start if not k.startswith("out."))
    assert not all(np.array_equal(choice.weights[k], start[k]) for k in start if k.startswith("out."))


def test_fedper_retrains_the_head_when_the_slice_favours_it():
    # An untrained global model on a linearly separable task: retraining the head at
    # the training rate lowers the validation loss, so the head model is kept.
    config = _config(rounds=10)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    choice = choose_personal(config, "fedper", _global(config), X[:160], y[:160], X[160:], y[160:])
    assert choice.chosen in ("head", "full")
    assert choice.epochs > 0
    if choice.chosen == "head":  # only the output layer moved
        start = _global(config)
        assert all(np.array_equal(choice.weights[k], start[k]) for k in start if not k.startswith("out."))


def test_compare_at_site_reports_what_the_personalised_model_is():
    config = _config()
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    split = split_site("s", X, y, test_fraction=0.3, seed=0)
    normalizer = Normalizer.from_stats(compute_stats(split.X_train))
    start = _global(config)
    result = compare_at_site(split, config, start, normalizer, mode="fedper")
    X_fit, y_fit, X_val, y_val = site_slices(split, config)
    choice = choose_personal(
        config, "fedper", start, normalizer.transform(X_fit), y_fit, normalizer.transform(X_val), y_val
    )
    assert result.chosen == choice.chosen != ""
    assert _same(result.personal, choice.weights)
    assert compare_at_site(split, config, start, normalizer, mode=None).chosen == ""


def test_without_a_validation_slice_fedper_keeps_the_trained_head():
    config = _config()
    start = _global(config)
    X_fit, y_fit, X_val, _ = _contrary()
    choice = choose_personal(config, "fedper", start, X_fit, y_fit, X_val[:0], np.zeros(0, np.int64))
    assert choice.chosen == "head"
    assert choice.epochs == config.rounds * config.train.epochs
    assert all(np.array_equal(choice.weights[k], start[k]) for k in start if not k.startswith("out."))
