"""FedMedian and trimmed mean against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fedhealth.ml.strategies import FedMedian, Rejected, TrimmedMean
from fedhealth.ml.types import Update, Weights

PREVIOUS: Weights = {"x": np.zeros(2, np.float32)}


def _updates(*rows: tuple[float, float]) -> list[Update]:
    # num_samples deliberately uneven: the robust statistics ignore them.
    return [
        Update({"x": np.array(row, np.float32)}, num_samples=10**i, site=f"s{i}")
        for i, row in enumerate(rows)
    ]


def test_fedmedian_odd_number_of_sites() -> None:
    # Prepare
    updates = _updates((1, 10), (2, -5), (100, 0))

    # Execute
    result = FedMedian().aggregate(PREVIOUS, updates)

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["x"], [2, 0])
    assert result.weights["x"].dtype == np.float32
    assert result.accepted == ["s0", "s1", "s2"]
    assert result.num_samples == 111


def test_fedmedian_even_number_of_sites_averages_the_middle_two() -> None:
    # Prepare: sorted columns [1, 2, 4, 100] and [-5, 0, 1, 10]
    updates = _updates((1, 10), (2, -5), (100, 0), (4, 1))

    # Execute
    result = FedMedian().aggregate(PREVIOUS, updates)

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["x"], [3, 0.5])


def test_fedmedian_skips_invalid_updates() -> None:
    # Prepare
    updates = [
        *_updates((1, 10), (2, -5), (100, 0)),
        Update({"x": np.full(2, np.nan, np.float32)}, 1, "bad"),
    ]

    # Execute
    result = FedMedian().aggregate(PREVIOUS, updates)

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["x"], [2, 0])
    assert result.rejected == [
        Rejected("bad", "parameter 'x' contains non-finite values (2 NaN, 0 Inf)", "nonfinite")
    ]


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        # columns sorted: [1, 2, 3, 4, 100] and [-50, 0, 1, 2, 3]
        (0.2, [3.0, 1.0]),  # floor(0.2 * 5) = 1 cut each side: mean(2, 3, 4), mean(0, 1, 2)
        (0.4, [3.0, 1.0]),  # 2 cut each side: the median
        (0.1, [22.0, -8.8]),  # floor(0.5) = 0 cut: plain unweighted mean
        (0.0, [22.0, -8.8]),
    ],
)
def test_trimmed_mean(beta: float, expected: list[float]) -> None:
    # Prepare
    updates = _updates((4, 2), (100, -50), (1, 3), (3, 0), (2, 1))

    # Execute
    result = TrimmedMean(beta=beta).aggregate(PREVIOUS, updates)

    # Assert
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["x"], expected, rtol=1e-6)
    assert result.weights["x"].dtype == np.float32


def test_trimmed_mean_cut_is_robust_to_float_rounding() -> None:
    # Prepare: 0.29 * 100 == 28.999999999999996 in floating point, yet 29 values must be cut
    # each side. Values 0..70 plus 29 outliers at 1000: cutting 29 removes every outlier.
    values = [*range(71), *[1000] * 29]
    updates = [Update({"x": np.full(2, v, np.float32)}, 1, f"s{i}") for i, v in enumerate(values)]

    # Execute
    result = TrimmedMean(beta=0.29).aggregate(PREVIOUS, updates)

    # Assert: mean of 29..70 (cutting only 28 would keep one outlier: 70.6)
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["x"], [49.5, 49.5])


@pytest.mark.parametrize("beta", [-0.1, 0.5, 1.0, float("nan")])
def test_trimmed_mean_rejects_invalid_beta(beta: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        TrimmedMean(beta=beta)
