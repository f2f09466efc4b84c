"""update_distance and find_outliers (Prepare / Execute / Assert)."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from fedhealth.ml.robust import find_outliers, update_distance
from fedhealth.ml.types import Weights

# ---------------------------------------------------------------- update_distance


def test_distance_is_the_l2_norm_over_all_parameters() -> None:
    # Prepare: differences (3, 0) and (4,): sqrt(9 + 16) = 5
    previous: Weights = {"w": np.array([1, 2], np.float32), "b": np.array([-1], np.float32)}
    weights: Weights = {"w": np.array([4, 2], np.float32), "b": np.array([3], np.float32)}

    # Execute
    distance = update_distance(weights, previous)

    # Assert
    assert distance == 5.0
    assert update_distance(previous, previous) == 0.0


def test_distance_is_computed_in_float64() -> None:
    # Prepare: 1e6 differences of 1e4: the squares sum to 1e14, far beyond float32's exact
    # range (a float32 running sum would stall), and 1e4 * 1e4 overflows nothing in float64.
    previous: Weights = {"w": np.zeros(1_000_000, np.float32)}
    weights: Weights = {"w": np.full(1_000_000, 1e4, np.float32)}

    # Execute
    distance = update_distance(weights, previous)

    # Assert: sqrt(1e6 * 1e8) = 1e7
    assert distance == pytest.approx(1e7, rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_is_infinitely_far(bad: float) -> None:
    # Prepare
    previous: Weights = {"w": np.array([np.inf, 0], np.float32)}
    weights: Weights = {"w": np.array([np.inf, bad], np.float32)}

    # Execute
    distance = update_distance(weights, previous)

    # Assert: inf - inf included, without a warning (warnings are errors here)
    assert distance == math.inf


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"w": np.zeros(3, np.float32)}, "parameter 'w' has shape (3,), expected (2,)"),
        ({"v": np.zeros(2, np.float32)}, "missing ['w'], extra ['v']"),
    ],
)
def test_mismatched_parameters_are_named(weights: Weights, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as error:
        update_distance(weights, {"w": np.zeros(2, np.float32)})
    assert message in str(error.value)


def test_distance_holds_at_most_one_float64_tensor() -> None:
    # Prepare: four 1 MiB float32 tensors; a model-sized float64 temporary would be 8 MiB.
    shape = (512, 512)
    previous: Weights = {f"p{i}": np.zeros(shape, np.float32) for i in range(4)}
    weights: Weights = {f"p{i}": np.ones(shape, np.float32) for i in range(4)}
    tensor64 = 512 * 512 * 8

    # Execute
    tracemalloc.start()
    try:
        distance = update_distance(weights, previous)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert
    assert distance == 1024.0  # sqrt(4 * 512 * 512)
    assert peak < 1.25 * tensor64, f"peak {peak / tensor64:.2f} float64 tensors"


# ---------------------------------------------------------------- find_outliers


def test_with_two_sites_the_huge_update_is_caught_and_the_honest_one_kept() -> None:
    # Execute
    outliers = find_outliers({"honest": 1.5, "attacker": 3e6}, factor=10)

    # Assert
    assert outliers == {
        "attacker": "distance from the global model 3e+06 is 2e+06 times the other "
        "updates' median 1.5 (limit 10)"
    }


def test_ordinary_spread_is_not_an_outlier() -> None:
    # Prepare: a site 9x the others' median, under the factor of 10.
    distances = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 18.0}

    # Execute
    outliers = find_outliers(distances, factor=10)

    # Assert
    assert outliers == {}
    assert list(find_outliers(distances, factor=5)) == ["d"]  # 18 > 5 x median(1, 2, 3)


def test_each_site_is_compared_with_the_others_only() -> None:
    # Prepare: two attackers among three honest sites, in input order.
    distances = {"x1": 500.0, "a": 1.0, "b": 1.2, "x2": 800.0, "c": 0.9}

    # Execute
    outliers = find_outliers(distances, factor=10)

    # Assert: each attacker against the median of the four others (1.1 for both)
    assert list(outliers) == ["x1", "x2"]
    assert "is 455 times the other updates' median 1.1" in outliers["x1"]


@pytest.mark.parametrize("distances", [{}, {"only": 1e9}])
def test_one_update_only_has_nothing_to_compare_with(distances: dict[str, float]) -> None:
    # Execute / Assert
    assert find_outliers(distances, factor=10) == {}


def test_when_the_others_did_not_move_any_movement_is_an_outlier() -> None:
    # Execute
    outliers = find_outliers({"a": 0.0, "b": 0.0, "mover": 0.5}, factor=10)

    # Assert
    assert outliers == {
        "mover": "distance from the global model 0.5 while the other updates' median is 0 "
        "(limit 10 x the median)"
    }
    assert find_outliers({"a": 0.0, "b": 0.0}, factor=10) == {}


def test_non_finite_distances_are_outliers_and_left_out_of_the_medians() -> None:
    # Execute
    outliers = find_outliers({"a": 1.0, "inf": math.inf, "nan": math.nan, "b": 1.1}, 10)
    alone = find_outliers({"a": 1.0, "inf": math.inf}, 10)

    # Assert
    assert outliers == {
        "inf": "distance from the global model is not finite (inf)",
        "nan": "distance from the global model is not finite (nan)",
    }
    assert alone == {"inf": "distance from the global model is not finite (inf)"}


@pytest.mark.parametrize("factor", [0.5, 0, -1, math.inf, math.nan, True])
def test_invalid_factor_is_refused(factor: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="factor must be a finite number >= 1, got"):
        find_outliers({"a": 1.0, "b": 2.0}, factor)


def test_negative_distance_is_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"distance of 'b' must be >= 0, got -2.0"):
        find_outliers({"a": 1.0, "b": -2.0}, 10)
