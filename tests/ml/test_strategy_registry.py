"""FedProx, the strategy registry, and the ML core's independence from Django."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedhealth.ml.strategies import (
    STRATEGIES,
    FedAvg,
    FedProx,
    get_strategy,
    strategy_params,
)
from fedhealth.ml.types import Update

# ---------------------------------------------------------------- FedProx


def test_fedprox_sends_mu_and_aggregates_like_fedavg() -> None:
    # Prepare
    previous = {"x": np.zeros(2, np.float32)}
    updates = [
        Update({"x": np.array([1, 2], np.float32)}, num_samples=1, site="a"),
        Update({"x": np.array([3, -2], np.float32)}, num_samples=3, site="b"),
    ]
    strategy = FedProx(proximal_mu=0.01)

    # Execute
    config = strategy.configure_fit(round_number=4)
    result = strategy.aggregate(previous, updates)

    # Assert
    assert config == {"proximal_mu": 0.01}
    assert FedProx().configure_fit(1) == {"proximal_mu": 0.1}
    assert FedAvg().configure_fit(1) == {}
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["x"], [2.5, -1.0])  # (1 * a + 3 * b) / 4


# ---------------------------------------------------------------- registry


def test_registry_builds_every_strategy_and_round_trips_params() -> None:
    # Execute
    built = {name: get_strategy(name) for name in STRATEGIES}

    # Assert
    assert set(STRATEGIES) == {
        "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "trimmed_mean",
        "krum", "multikrum",
    }  # fmt: skip
    for name, strategy in built.items():
        assert strategy.name == name
        assert strategy.params() == strategy_params(name)
        assert get_strategy(name, **strategy.params()).params() == strategy.params()


def test_registry_passes_params() -> None:
    # Execute
    strategy = get_strategy("fedadam", eta=0.05, tau=1e-4)

    # Assert
    assert strategy.params() == {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-4}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fedsgd", {}, "unknown strategy 'fedsgd'; valid strategies: fedavg, fedprox, fedadam"),
        (
            "fedavg",
            {"mu": 1.0},
            "unknown parameter(s) mu for strategy 'fedavg'; valid parameters: none",
        ),
        (
            "fedadagrad",
            {"beta_2": 0.9},
            "valid parameters: eta (default 0.1), beta_1 (default 0.9), tau",
        ),
        ("fedprox", {"proximal_mu": -1.0}, "proximal_mu must be in [0, inf), got -1.0"),
        ("fedadam", {"eta": 0.0}, "eta must be in (0, inf), got 0.0"),
        ("fedyogi", {"beta_1": 1.0}, "beta_1 must be in [0, 1), got 1.0"),
        ("fedadam", {"tau": float("nan")}, "tau must be in (0, inf), got nan"),
        ("trimmed_mean", {"beta": 0.5}, "beta must be in [0, 0.5), got 0.5"),
        ("trimmed_mean", {"beta": "0.1"}, "beta must be a number, got '0.1'"),
        ("fedprox", {"proximal_mu": True}, "proximal_mu must be a number, got True"),
    ],
)
def test_registry_errors_are_clear(name: str, params: dict[str, object], message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as error:
        get_strategy(name, **params)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_strategies_do_not_import_django() -> None:
    # Prepare: static, because the parent package ``fedhealth`` loads Celery/Django itself.
    package = Path(__file__).resolve().parents[2] / "fedhealth" / "ml" / "strategies"
    imported: set[str] = set()

    # Execute
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])

    # Assert
    assert imported <= {"__future__", "abc", "collections", "dataclasses", "inspect", "math",
                        "typing", "numpy", "fedhealth"}, imported  # fmt: skip
