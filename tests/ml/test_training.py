"""Local training: learning, bit-exact determinism, FedProx, edge cases, prediction."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.metrics import log_loss

from fedhealth.ml.metrics import METRIC_KEYS
from fedhealth.ml.model import ModelConfig, init_weights, weight_spec
from fedhealth.ml.training import (
    TrainConfig,
    _learning_rates,
    evaluate,
    predict_proba,
    train_local,
)

REPO = Path(__file__).resolve().parents[2]
ML_MODULES = ["model", "weights_io", "training", "metrics", "types"]


def make_data(n: int = 800, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable, normalised binary problem: X (n, d) float32, y (n,) int."""
    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=4, n_redundant=0, class_sep=1.5, random_state=seed
    )
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


def assert_weights_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The model is far too small for intra-op threads; on a loaded CI machine they only
    # add contention (seconds per test). Restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def deterministic_algorithms() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def test_mlp_learns_a_learnable_problem() -> None:
    # Prepare
    X, y = make_data(n=1500)
    X_test, y_test = X[1000:], y[1000:]
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=0)

    # Execute
    result = train_local(cfg, start, X[:1000], y[:1000], TrainConfig(epochs=5))
    metrics = evaluate(cfg, result.weights, X_test, y_test)

    # Assert
    assert metrics["auroc"] > 0.9
    assert metrics["accuracy"] > 0.8
    assert result.loss < evaluate(cfg, start, X[:1000], y[:1000])["loss"]


def test_logistic_regression_builds_and_trains() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 3)).astype(np.float32)
    y = (X @ np.array([2.0, -1.0, 0.5]) + 0.3 * rng.standard_normal(600) > 0).astype(int)
    cfg = ModelConfig(n_features=3, hidden=())

    # Execute
    result = train_local(cfg, init_weights(cfg, seed=0), X, y, TrainConfig(epochs=5, lr=0.05))

    # Assert
    assert list(result.weights) == ["out.weight", "out.bias"]
    assert result.metrics["auroc"] > 0.95
    coef = result.weights["out.weight"][0]
    assert coef[0] > 0 > coef[1]  # learnt the signs of the true coefficients


def test_result_fields() -> None:
    # Prepare
    X, y = make_data(n=100)
    cfg = ModelConfig(n_features=6)

    # Execute
    result = train_local(cfg, init_weights(cfg, seed=0), X, y, TrainConfig(epochs=1))

    # Assert
    assert result.num_samples == 100
    assert math.isfinite(result.loss) and result.loss > 0
    assert set(result.metrics) == {*METRIC_KEYS, "loss"}
    assert {k: v.shape for k, v in result.weights.items()} == weight_spec(cfg)
    assert all(v.dtype == np.float32 for v in result.weights.values())


def test_same_seed_gives_bit_identical_weights() -> None:
    # Prepare
    X, y = make_data(n=300)
    cfg = ModelConfig(n_features=6, dropout=0.3)
    start = init_weights(cfg, seed=0)
    train = TrainConfig(epochs=2, seed=42)

    # Execute
    first = train_local(cfg, start, X, y, train)
    torch.manual_seed(1234)  # the global RNG must not matter
    second = train_local(cfg, start, X, y, train)

    # Assert
    assert_weights_identical(first.weights, second.weights)
    assert first.loss == second.loss


def test_different_seed_gives_different_weights() -> None:
    # Prepare
    X, y = make_data(n=300)
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=0)

    # Execute
    a = train_local(cfg, start, X, y, TrainConfig(seed=1))
    b = train_local(cfg, start, X, y, TrainConfig(seed=2))

    # Assert
    assert any(not np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_deterministic_algorithms_mode_gives_the_same_weights(
    deterministic_algorithms: None,
) -> None:
    # Prepare
    X, y = make_data(n=200)
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=0)
    torch.use_deterministic_algorithms(False)
    expected = train_local(cfg, start, X, y, TrainConfig(seed=3))

    # Execute
    torch.use_deterministic_algorithms(True)
    result = train_local(cfg, start, X, y, TrainConfig(seed=3))

    # Assert
    assert_weights_identical(result.weights, expected.weights)


def test_training_leaves_global_state_and_inputs_alone() -> None:
    # Prepare
    X, y = make_data(n=200)
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=0)
    start_copy = {k: v.copy() for k, v in start.items()}
    X_copy = X.copy()
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()

    # Execute
    train_local(cfg, start, X, y, TrainConfig())

    # Assert
    assert torch.equal(rng_state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads
    assert_weights_identical(start, start_copy)
    np.testing.assert_array_equal(X, X_copy)


@pytest.mark.parametrize("n", [1, 5, 33])
def test_tiny_datasets_train(n: int) -> None:
    # Prepare
    X, y = make_data(n=64)
    X, y = X[:n], y[:n]
    cfg = ModelConfig(n_features=6)

    # Execute
    result = train_local(cfg, init_weights(cfg, seed=0), X, y, TrainConfig(batch_size=32))

    # Assert
    assert result.num_samples == n
    assert math.isfinite(result.loss)
    assert all(np.isfinite(w).all() for w in result.weights.values())


def test_fedprox_with_huge_mu_stays_close_to_global() -> None:
    # Prepare
    X, y = make_data(n=400)
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=1)

    # Execute
    plain = train_local(cfg, start, X, y, TrainConfig(epochs=3))
    prox = train_local(cfg, start, X, y, TrainConfig(epochs=3, proximal_mu=1e4))

    # Assert
    assert distance(prox.weights, start) < 0.05 * distance(plain.weights, start)
    for key in start:
        np.testing.assert_allclose(prox.weights[key], start[key], atol=1e-3)


def test_progress_is_reported_after_each_epoch() -> None:
    # Prepare
    X, y = make_data(n=50)
    cfg = ModelConfig(n_features=6)
    calls: list[tuple[int, int]] = []

    # Execute
    train_local(
        cfg,
        init_weights(cfg, seed=0),
        X,
        y,
        TrainConfig(epochs=3),
        progress=lambda *a: calls.append(a),
    )

    # Assert
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_every_lr_schedule_trains(schedule: str) -> None:
    # Prepare
    X, y = make_data(n=300)
    cfg = ModelConfig(n_features=6)

    # Execute
    result = train_local(cfg, init_weights(cfg, seed=0), X, y, TrainConfig(lr_schedule=schedule))

    # Assert
    assert result.metrics["auroc"] > 0.85


def test_learning_rate_schedules() -> None:
    # Execute
    cosine = _learning_rates(TrainConfig(lr=1.0, lr_schedule="cosine"), 100)
    step = _learning_rates(TrainConfig(lr=1.0, lr_schedule="step"), 90)
    constant = _learning_rates(TrainConfig(lr=0.5, lr_schedule="constant"), 7)

    # Assert
    assert len(cosine) == 100 and cosine[0] == 1.0
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    np.testing.assert_allclose(cosine[-1], 0.1, atol=1e-3)
    assert step[:30] == [1.0] * 30 and step[30:60] == [0.5] * 30 and step[60:] == [0.25] * 30
    assert constant == [0.5] * 7


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((0, 6), np.float32), np.zeros(0, int), "n == 0"),
        (np.zeros((4, 5), np.float32), np.zeros(4, int), r"shape \(n, 6\)"),
        (np.zeros((4, 6), np.float32), np.zeros(3, int), r"y must have shape \(4,\)"),
        (np.zeros((4, 6), np.float32), np.array([0, 1, 2, 1]), "only 0 and 1"),
        (np.full((4, 6), np.nan, np.float32), np.zeros(4, int), "NaN"),
    ],
    ids=["empty", "features", "labels-shape", "labels-values", "nan"],
)
def test_bad_inputs_raise_value_error(X: np.ndarray, y: np.ndarray, message: str) -> None:
    # Prepare
    cfg = ModelConfig(n_features=6)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        train_local(cfg, init_weights(cfg, seed=0), X, y, TrainConfig())


def test_mismatched_global_weights_raise_value_error() -> None:
    # Prepare
    X, y = make_data(n=20)

    # Execute / Assert
    with pytest.raises(ValueError, match="hidden.0.weight"):
        train_local(
            ModelConfig(n_features=6),
            init_weights(ModelConfig(n_features=5), 0),
            X,
            y,
            TrainConfig(),
        )


def test_read_only_float64_inputs_are_accepted() -> None:
    # Prepare
    X, y = make_data(n=40)
    X64 = X.astype(np.float64)
    X64.setflags(write=False)
    cfg = ModelConfig(n_features=6)
    start = init_weights(cfg, seed=0)

    # Execute
    result = train_local(cfg, start, X64, y.astype(bool), TrainConfig())
    expected = train_local(cfg, start, X, y, TrainConfig())

    # Assert
    assert_weights_identical(result.weights, expected.weights)


def test_predict_proba_is_batched_consistently() -> None:
    # Prepare: more rows than one prediction batch (8192)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10_000, 4)).astype(np.float32)
    cfg = ModelConfig(n_features=4)
    weights = init_weights(cfg, seed=5)

    # Execute
    whole = predict_proba(cfg, weights, X)
    parts = np.concatenate(
        [predict_proba(cfg, weights, X[:5000]), predict_proba(cfg, weights, X[5000:])]
    )

    # Assert
    assert whole.shape == (10_000,)
    assert ((whole >= 0) & (whole <= 1)).all()
    np.testing.assert_allclose(whole, parts, rtol=1e-6)
    np.testing.assert_array_equal(whole, predict_proba(cfg, weights, X))  # dropout off


def test_evaluate_reports_bce_loss() -> None:
    # Prepare
    X, y = make_data(n=200)
    cfg = ModelConfig(n_features=6)
    weights = init_weights(cfg, seed=0)

    # Execute
    metrics = evaluate(cfg, weights, X, y)

    # Assert
    assert set(metrics) == {*METRIC_KEYS, "loss"}
    np.testing.assert_allclose(
        metrics["loss"], log_loss(y, predict_proba(cfg, weights, X)), rtol=1e-5
    )


def test_train_config_dict_round_trip_and_validation() -> None:
    # Prepare
    train = TrainConfig(epochs=3, batch_size=16, lr=1e-3, proximal_mu=0.01, lr_schedule="step")

    # Execute
    data = train.to_dict()

    # Assert
    assert TrainConfig.from_dict(data) == train
    assert TrainConfig.from_dict({}) == TrainConfig()
    for bad in [
        {"epochs": 0},
        {"lr": -1.0},
        {"lr_schedule": "linear"},
        {"momentum": 0.9},
        {"batch_size": 2.5},
        {"seed": 2**64},
    ]:
        with pytest.raises(ValueError):
            TrainConfig.from_dict(bad)


@pytest.mark.parametrize("module", ML_MODULES)
def test_ml_core_does_not_import_django(module: str) -> None:
    """Statically: these modules import neither Django nor the Django side of the project.

    (At runtime ``import fedhealth.ml.x`` runs ``fedhealth/__init__.py``, whose Celery app
    loads Django; the ML core itself must not depend on it.)
    """
    # Prepare
    tree = ast.parse((REPO / "fedhealth" / "ml" / f"{module}.py").read_text())

    # Execute
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]

    # Assert
    assert not [m for m in imported if m.split(".")[0] in {"django", "rest_framework", "celery"}]
    assert not [
        m for m in imported if m.startswith("fedhealth.") and not m.startswith("fedhealth.ml")
    ]


def test_metrics_can_be_measured_on_held_out_rows() -> None:
    from sklearn.datasets import make_classification

    from fedhealth.ml.model import ModelConfig, init_weights
    from fedhealth.ml.training import TrainConfig, evaluate, train_local

    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    X = X.astype(np.float32)
    cfg = ModelConfig(4)
    train = TrainConfig(epochs=2, seed=3)

    result = train_local(cfg, init_weights(cfg, 0), X[:200], y[:200], train, evaluate_on=(X[200:], y[200:]))

    expected = evaluate(cfg, result.weights, X[200:], y[200:])
    assert result.metrics["n"] == 100.0
    np.testing.assert_allclose(result.metrics["accuracy"], expected["accuracy"])
    np.testing.assert_allclose(result.metrics["loss"], expected["loss"], rtol=1e-6)
