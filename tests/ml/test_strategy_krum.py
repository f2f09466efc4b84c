"""Krum and Multi-Krum against hand-computed scores (Prepare / Execute / Assert)."""

from __future__ import annotations

import numpy as np
import pytest

from fedhealth.ml.strategies import Krum, MultiKrum, get_strategy, strategy_params
from fedhealth.ml.strategies.krum import krum_scores, pairwise_sq_distances
from fedhealth.ml.types import Update, Weights

PREVIOUS: Weights = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}


def _update(value: float, site: str, num_samples: int = 10) -> Update:
    # Squared distance between two updates: 3 * (value_i - value_j) ** 2 over both parameters.
    weights = {"w": np.array([value, -value], np.float32), "b": np.array([value], np.float32)}
    return Update(weights, num_samples, site)


# Five honest sites near 0 and two colluding attackers at 50 (f = 2, n = 7: n - f - 2 = 3
# neighbours per score), attackers first in arrival order and claiming 2**31 - 1 rows.
# Scores / 3, from the honest values' pairwise squared gaps:
#   0.0: 0.01 + 0.04 + 0.0625 = 0.1125      0.1: 0.01 + 0.0225 + 0.09 = 0.1225
#   0.25: 0.0225 + 0.0625 + 0.0625 = 0.1475  -0.2: 0.04 + 0.09 + 0.2025 = 0.3325
#   0.5: 0.0625 + 0.16 + 0.25 = 0.4725      50 (each): 0 + 49.5^2 + 49.75^2 = 4925.3125
ROUND = [
    _update(50.0, "attacker1", 2**31 - 1),
    _update(0.5, "e", 40),
    _update(0.1, "b", 20),
    _update(50.0, "attacker2", 2**31 - 1),
    _update(0.0, "a", 10),
    _update(-0.2, "d", 30),
    _update(0.25, "c", 1000),
]


def test_scores_match_the_hand_computation() -> None:
    # Execute
    scores = krum_scores(pairwise_sq_distances([u.weights for u in ROUND]), byzantine=2)

    # Assert
    expected = 3 * np.array([4925.3125, 0.4725, 0.1225, 4925.3125, 0.1125, 0.3325, 0.1475])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_pairwise_distances_match_a_brute_force_float64_computation() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    models = [
        {"w": rng.standard_normal((70, 300), dtype=np.float32), "b": rng.standard_normal(5, dtype=np.float32)}
        for _ in range(4)
    ]  # fmt: skip
    flat = [np.concatenate([m["w"].ravel(), m["b"]]).astype(np.float64) for m in models]

    # Execute
    distances = pairwise_sq_distances(models)

    # Assert
    expected = [[float(np.sum((x - y) ** 2)) for y in flat] for x in flat]
    np.testing.assert_allclose(distances, expected, rtol=1e-12)
    np.testing.assert_array_equal(np.diag(distances), 0.0)


def test_krum_selects_the_honest_update_with_the_tightest_neighbourhood() -> None:
    # Execute
    result = Krum(byzantine=2).aggregate(PREVIOUS, ROUND)

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["w"], [0.0, -0.0])
    np.testing.assert_array_equal(result.weights["b"], [0.0])
    assert result.accepted == ["a"]
    assert result.num_samples == 10
    assert result.refused is None
    assert [(r.site, r.code) for r in result.rejected] == [
        ("b", "not_selected"), ("c", "not_selected"), ("d", "not_selected"),
        ("e", "not_selected"), ("attacker1", "not_selected"), ("attacker2", "not_selected"),
    ]  # fmt: skip
    assert result.rejected[0].reason == (
        "not selected by Krum: score 0.368 ranked 2 of 7; the 1 lowest are used"  # 3 x 0.1225
    )


def test_multikrum_averages_the_best_unweighted() -> None:
    # Execute
    result = MultiKrum(byzantine=2, select=3).aggregate(PREVIOUS, ROUND)

    # Assert: mean of 0.0, 0.1, 0.25, whatever their row counts (10, 20, 1000)
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["b"], [0.35 / 3], rtol=1e-6)
    np.testing.assert_allclose(result.weights["w"], [0.35 / 3, -0.35 / 3], rtol=1e-6)
    assert result.weights["b"].dtype == np.float32
    assert result.accepted == ["b", "a", "c"]  # in arrival order
    assert result.num_samples == 1030
    assert [r.site for r in result.rejected] == ["d", "e", "attacker1", "attacker2"]


def test_krum_survives_identical_updates() -> None:
    # Prepare: all distances 0: every score ties; the first to arrive is taken.
    updates = [_update(1.0, f"s{i}") for i in range(5)]

    # Execute
    result = Krum().aggregate(PREVIOUS, updates)

    # Assert
    assert result.accepted == ["s0"]
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["b"], [1.0])


@pytest.mark.parametrize(
    ("strategy", "count", "reason"),
    [
        (Krum(), 4, "Krum with byzantine=1 and select=1 needs at least 5 valid updates "
                    "(2f + 3 = 5, f + select = 2), got 4"),
        (Krum(byzantine=0), 2, "Krum with byzantine=0 and select=1 needs at least 3 valid "
                               "updates (2f + 3 = 3, f + select = 1), got 2"),
        (MultiKrum(byzantine=0, select=4), 3, "MultiKrum with byzantine=0 and select=4 needs "
                                              "at least 4 valid updates (2f + 3 = 3, "
                                              "f + select = 4), got 3"),
    ],
)  # fmt: skip
def test_too_few_valid_updates_are_refused_not_guessed(
    strategy: Krum, count: int, reason: str
) -> None:
    # Prepare: one more update that fails the checks does not count.
    updates = [_update(0.1 * i, f"s{i}") for i in range(count)]
    broken = Update({"w": np.zeros(2, np.float32)}, 1, "broken")

    # Execute
    result = strategy.aggregate(PREVIOUS, [*updates, broken])

    # Assert
    assert result.weights is None
    assert result.refused_code == "too_few"
    assert result.refused == reason
    assert result.accepted == [f"s{i}" for i in range(count)]
    assert [r.site for r in result.rejected] == ["broken"]


def test_exactly_2f_plus_3_updates_are_enough() -> None:
    # Prepare
    values = [0.0, 0.1, 0.2, 0.35, 0.5]
    updates = [_update(v, f"s{i}") for i, v in enumerate(values)]

    # Execute
    result = Krum(byzantine=1).aggregate(PREVIOUS, updates)

    # Assert: scores / 3 with 2 neighbours: s1 0.01 + 0.01, s2 0.01 + 0.0225, s0 0.01 + 0.04
    assert result.accepted == ["s1"]


def test_registry_and_params() -> None:
    # Execute
    from_json = get_strategy("multikrum", byzantine=2.0, select=4.0)  # forms hand floats

    # Assert
    assert strategy_params("krum") == {"byzantine": 1, "select": 1}
    assert strategy_params("multikrum") == {"byzantine": 1, "select": 3}
    assert isinstance(from_json, MultiKrum)
    assert from_json.params() == {"byzantine": 2, "select": 4}
    assert isinstance(from_json.byzantine, int) and isinstance(from_json.select, int)
    assert from_json.required() == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"byzantine": 1.5}, "byzantine must be a whole number in [0, 1000], got 1.5"),
        ({"byzantine": -1}, "byzantine must be in [0, 1000], got -1"),
        ({"select": 0}, "select must be in [1, 1000], got 0"),
        ({"select": True}, "select must be a number, got True"),
        ({"select": float("inf")}, "select must be in [1, 1000], got inf"),
    ],
)
def test_invalid_params_are_named(params: dict[str, object], message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as error:
        get_strategy("krum", **params)  # type: ignore[arg-type]
    assert str(error.value) == message
