"""Federated normalisation: merged per-site sufficient statistics equal the pooled ones."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fedhealth.ml.stats import Normalizer, SufficientStats, compute_stats, merge_stats


def sites(seed: int = 0) -> list[np.ndarray]:
    """Three sites of different sizes and distributions over four vitals."""
    rng = np.random.default_rng(seed)
    centre = np.array([75.0, 125.0, 80.0, 96.0])
    return [
        rng.normal(centre + shift, scale, size=(n, 4))
        for n, shift, scale in [(120, 0.0, 5.0), (37, 8.0, 12.0), (301, -4.0, 2.0)]
    ]


def test_merged_site_stats_give_the_pooled_mean_and_std() -> None:
    # Prepare
    parts = sites()
    pooled = np.concatenate(parts)

    # Execute
    norm = Normalizer.from_stats(merge_stats([compute_stats(X) for X in parts]))

    # Assert
    np.testing.assert_allclose(norm.mean, np.mean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.std, np.std(pooled, axis=0), rtol=1e-9)


def test_compute_stats_sums_in_float64() -> None:
    # Prepare
    X = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)

    # Execute
    stats = compute_stats(X)

    # Assert
    assert stats.count == 2
    assert stats.sum.dtype == np.float64 and stats.sumsq.dtype == np.float64
    np.testing.assert_array_equal(stats.sum, [4.0, 6.0])
    np.testing.assert_array_equal(stats.sumsq, [10.0, 20.0])


def test_compute_stats_rejects_a_non_matrix() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        compute_stats(np.zeros(3))


def test_merge_stats_rejects_empty_and_mismatched_dims() -> None:
    # Prepare
    a, b = compute_stats(np.ones((2, 3))), compute_stats(np.ones((2, 4)))

    # Execute / Assert
    with pytest.raises(ValueError, match="empty"):
        merge_stats([])
    with pytest.raises(ValueError, match=r"different feature counts: \[3, 4\]"):
        merge_stats([a, b])


def test_transform_standardises_to_float32() -> None:
    # Prepare
    X = np.concatenate(sites())
    norm = Normalizer.from_stats(compute_stats(X))

    # Execute
    Z = norm.transform(X)

    # Assert
    assert Z.dtype == np.float32 and Z.shape == X.shape
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, rtol=1e-5)


def test_transform_rejects_the_wrong_number_of_features() -> None:
    # Prepare
    norm = Normalizer(mean=np.zeros(4), std=np.ones(4))

    # Execute / Assert
    with pytest.raises(ValueError, match="features"):
        norm.transform(np.zeros((2, 3)))


@pytest.mark.parametrize("value", [0.1, 80.3, 1e6 / 3])
def test_constant_feature_gets_unit_std_despite_rounding(value: float) -> None:
    # Prepare: such values are not exact in binary, so sumsq/n - mean^2 is noise, not 0
    X = np.column_stack([np.full(1000, value), np.arange(1000.0)])

    # Execute
    norm = Normalizer.from_stats(merge_stats([compute_stats(X[:300]), compute_stats(X[300:])]))

    # Assert
    assert norm.std[0] == 1.0
    np.testing.assert_allclose(norm.std[1], np.std(X[:, 1]))
    np.testing.assert_allclose(norm.transform(X)[:, 0], 0.0, atol=1e-6)


def test_negative_variance_from_cancellation_is_clipped() -> None:
    # Prepare: sumsq slightly below n * mean^2, as float rounding can produce
    stats = SufficientStats(count=4, sum=np.array([4e8]), sumsq=np.array([4e16 - 64.0]))

    # Execute
    norm = Normalizer.from_stats(stats)

    # Assert
    np.testing.assert_array_equal(norm.std, [1.0])


def test_from_stats_refuses_zero_rows() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="zero rows"):
        Normalizer.from_stats(SufficientStats(count=0, sum=np.zeros(2), sumsq=np.zeros(2)))


def test_stats_and_normalizer_round_trip_through_json() -> None:
    # Prepare
    stats = compute_stats(sites()[0])
    norm = Normalizer.from_stats(stats)

    # Execute
    stats2 = SufficientStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    norm2 = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))

    # Assert
    assert stats2.count == stats.count
    np.testing.assert_array_equal(stats2.sum, stats.sum)
    np.testing.assert_array_equal(stats2.sumsq, stats.sumsq)
    np.testing.assert_array_equal(norm2.mean, norm.mean)
    np.testing.assert_array_equal(norm2.std, norm.std)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ([], "must be a mapping"),
        ({"sum": [1.0], "sumsq": [1.0]}, "'count' must be a non-negative integer"),
        ({"count": -1, "sum": [1.0], "sumsq": [1.0]}, "'count' must be a non-negative integer"),
        ({"count": True, "sum": [1.0], "sumsq": [1.0]}, "'count' must be a non-negative integer"),
        ({"count": 2, "sumsq": [1.0]}, "missing field 'sum'"),
        ({"count": 2, "sum": ["a"], "sumsq": [1.0]}, "'sum' must be a list of numbers"),
        ({"count": 2, "sum": [[1.0]], "sumsq": [1.0]}, "'sum' must be a non-empty 1-D list"),
        ({"count": 2, "sum": [], "sumsq": []}, "'sum' must be a non-empty 1-D list"),
        ({"count": 2, "sum": [1.0, 2.0], "sumsq": [1.0]}, r"'sum' has shape \(2,\)"),
        ({"count": 2, "sum": [float("nan")], "sumsq": [1.0]}, "NaN or infinite"),
        ({"count": 2, "sum": [1.0], "sumsq": [-1.0]}, "'sumsq' must not be negative"),
    ],
)
def test_stats_from_dict_rejects_bad_input(d: Any, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        SufficientStats.from_dict(d)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ("x", "must be a mapping"),
        ({"mean": [0.0]}, "missing field 'std'"),
        ({"mean": [0.0, 1.0], "std": [1.0]}, "'mean' has shape"),
        ({"mean": [0.0], "std": [0.0]}, "'std' must be positive"),
        ({"mean": [float("inf")], "std": [1.0]}, "NaN or infinite"),
    ],
)
def test_normalizer_from_dict_rejects_bad_input(d: Any, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        Normalizer.from_dict(d)


def test_feature_summary_gives_aggregates_per_feature() -> None:
    from fedhealth.ml.stats import feature_summary

    X = np.array([[60.0, 95.0], [80.0, 99.0]])

    summary = feature_summary(["heart_rate", "spo2"], ["bpm", "%"], X)

    assert summary["heart_rate"] == {"unit": "bpm", "mean": 70.0, "std": 10.0, "min": 60.0, "max": 80.0}
    assert summary["spo2"]["max"] == 99.0
