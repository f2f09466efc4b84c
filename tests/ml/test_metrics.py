"""Classification metrics: hand-computed values, sklearn agreement and undefined cases.

pytest turns warnings into errors, so every edge case here also proves that no
UndefinedMetricWarning / RuntimeWarning escapes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from fedhealth.ml.metrics import (
    METRIC_KEYS,
    calibration_points,
    compute_metrics,
    confusion,
    defined_counts,
    mean_metrics,
    roc_points,
)

# Predictions at 0.5: [0, 1, 1, 0, 1, 0, 0] -> tn=3 (rows 0, 5, 6), fp=1 (1), fn=1 (3), tp=2 (2, 4).
Y_TRUE = np.array([0, 0, 1, 1, 1, 0, 0])
Y_PROB = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2, 0.3])


def test_compute_metrics_matches_hand_computed_values() -> None:
    # Execute
    m = compute_metrics(Y_TRUE, Y_PROB)

    # Assert
    assert tuple(m) == METRIC_KEYS
    assert all(isinstance(v, float) for v in m.values())
    np.testing.assert_allclose(m["accuracy"], 5 / 7)
    np.testing.assert_allclose(m["sensitivity"], 2 / 3)
    np.testing.assert_allclose(m["specificity"], 3 / 4)
    np.testing.assert_allclose(m["balanced_accuracy"], (2 / 3 + 3 / 4) / 2)
    np.testing.assert_allclose(m["precision"], 2 / 3)
    np.testing.assert_allclose(m["f1"], 2 * 2 / (2 * 2 + 1 + 1))
    # Positive/negative pairs ranked correctly: 0.8 and 0.9 beat all 4 negatives, 0.4 beats 3.
    np.testing.assert_allclose(m["auroc"], 11 / 12)
    squared = [0.01, 0.36, 0.04, 0.36, 0.01, 0.04, 0.09]
    np.testing.assert_allclose(m["brier"], sum(squared) / 7)
    likelihoods = [0.9, 0.4, 0.8, 0.4, 0.9, 0.8, 0.7]
    np.testing.assert_allclose(m["log_loss"], -np.mean(np.log(likelihoods)))
    assert m["n"] == 7.0


def test_confusion_counts_and_threshold_is_inclusive() -> None:
    # Execute
    at_half = confusion(Y_TRUE, Y_PROB)
    at_point_eight = confusion(Y_TRUE, Y_PROB, threshold=0.8)

    # Assert
    assert at_half == {"tn": 3, "fp": 1, "fn": 1, "tp": 2}
    assert at_point_eight == {"tn": 4, "fp": 0, "fn": 1, "tp": 2}  # 0.8 >= 0.8 is positive


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
def test_threshold_metrics_agree_with_sklearn(threshold: float) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
    pred = (p >= threshold).astype(int)

    # Execute
    m = compute_metrics(y, p, threshold=threshold)

    # Assert
    np.testing.assert_allclose(m["accuracy"], accuracy_score(y, pred))
    np.testing.assert_allclose(m["balanced_accuracy"], balanced_accuracy_score(y, pred))
    np.testing.assert_allclose(m["sensitivity"], recall_score(y, pred))
    np.testing.assert_allclose(m["specificity"], recall_score(y, pred, pos_label=0))
    np.testing.assert_allclose(m["precision"], precision_score(y, pred, zero_division=0))
    np.testing.assert_allclose(m["f1"], f1_score(y, pred, zero_division=0))


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_auroc_without_warning(label: int) -> None:
    # Prepare
    y = np.full(4, label)
    p = np.array([0.1, 0.7, 0.4, 0.9])

    # Execute
    m = compute_metrics(y, p)

    # Assert
    assert math.isnan(m["auroc"])
    present, missing = ("sensitivity", "specificity") if label else ("specificity", "sensitivity")
    assert math.isnan(m[missing])
    np.testing.assert_allclose(m[present], 0.5)
    # Balanced accuracy needs both classes: with one it would be plain accuracy.
    assert math.isnan(m["balanced_accuracy"])
    # Without positive-class rows, precision and F1 are undefined too.
    assert math.isnan(m["precision"]) == math.isnan(m["f1"]) == (label == 0)
    np.testing.assert_allclose(m["accuracy"], 0.5)
    assert math.isfinite(m["log_loss"]) and math.isfinite(m["brier"])


def test_positive_class_zero_turns_the_threshold_metrics_around() -> None:
    # Prepare: label 0 is the condition to detect (the default vitals: healthy = 0);
    # the model outputs the probability of label 1
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.3, 0.6, 0.7, 0.9])
    pred = (p >= 0.5).astype(int)

    # Execute
    m = compute_metrics(y, p, positive=0)
    c = confusion(y, p, positive=0)
    roc = roc_points(y, p, positive=0)
    cal = calibration_points(y, p, n_bins=2, positive=0)

    # Assert: every figure is the label-0 class's, as sklearn's pos_label=0 computes it
    np.testing.assert_allclose(m["sensitivity"], recall_score(y, pred, pos_label=0))
    np.testing.assert_allclose(m["specificity"], recall_score(y, pred, pos_label=1))
    np.testing.assert_allclose(m["precision"], precision_score(y, pred, pos_label=0))
    np.testing.assert_allclose(m["f1"], f1_score(y, pred, pos_label=0))
    np.testing.assert_allclose(m["auroc"], roc_auc_score(y, p))  # symmetric
    assert c == {"tp": 2, "fn": 1, "fp": 1, "tn": 3}  # tp: label 0 predicted 0
    fpr, tpr, _ = roc_curve(y, 1 - p, pos_label=0)
    np.testing.assert_allclose(roc["fpr"], fpr) and np.testing.assert_allclose(roc["tpr"], tpr)
    np.testing.assert_allclose(cal["fraction_positive"], [1 / 4, 2 / 3])
    with pytest.raises(ValueError, match="positive"):
        compute_metrics(y, p, positive=2)


def test_mean_metrics_counts_only_the_sites_where_a_metric_is_defined() -> None:
    # Prepare: the second site holds one class (stored as null, or NaN in memory)
    sites = [
        {"auroc": 0.8, "accuracy": 0.7},
        {"auroc": None, "accuracy": 0.9},
        {"auroc": 0.6, "accuracy": 0.8},
    ]

    # Execute
    mean, counts = mean_metrics(sites), defined_counts(sites)

    # Assert
    np.testing.assert_allclose(mean["auroc"], 0.7)
    assert counts == {"auroc": 2, "accuracy": 3}


def test_no_positive_predictions_gives_zero_precision_and_f1() -> None:
    # Execute
    m = compute_metrics(np.array([0, 1, 0]), np.array([0.1, 0.2, 0.3]))

    # Assert
    assert m["precision"] == 0.0
    assert m["f1"] == 0.0
    assert m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0


def test_extreme_probabilities_give_finite_log_loss() -> None:
    # Execute
    m = compute_metrics(np.array([0, 1]), np.array([1.0, 0.0]))

    # Assert
    assert math.isfinite(m["log_loss"]) and m["log_loss"] > 30
    assert m["brier"] == 1.0


def test_empty_input_gives_nan_metrics_and_zero_n() -> None:
    # Execute
    m = compute_metrics(np.array([], dtype=int), np.array([]))

    # Assert
    assert tuple(m) == METRIC_KEYS
    assert m["n"] == 0.0
    assert all(math.isnan(v) for k, v in m.items() if k != "n")


@pytest.mark.parametrize(
    ("y_true", "y_prob"),
    [
        ([0, 1], [0.5]),
        ([0, 2], [0.5, 0.5]),
        ([0, 1], [0.5, 1.5]),
        ([0, 1], [0.5, float("nan")]),
        ([[0, 1]], [[0.5, 0.5]]),
    ],
    ids=["length", "label", "above-one", "nan", "2d"],
)
def test_invalid_input_is_rejected(y_true: list, y_prob: list) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        compute_metrics(np.array(y_true), np.array(y_prob))


def test_mean_metrics_ignores_nan_and_sums_n() -> None:
    # Prepare
    sites = [
        {"auroc": 0.8, "accuracy": 0.5, "n": 10.0},
        {"auroc": float("nan"), "accuracy": 0.7, "n": 5.0},
        {"auroc": 0.6, "accuracy": 0.9, "n": 1.0, "loss": 0.3},
    ]

    # Execute
    mean = mean_metrics(sites)

    # Assert
    assert list(mean) == ["auroc", "accuracy", "n", "loss"]
    np.testing.assert_allclose(mean["auroc"], 0.7)
    np.testing.assert_allclose(mean["accuracy"], 0.7)
    assert mean["n"] == 16.0
    assert mean["loss"] == 0.3


def test_mean_metrics_all_nan_and_empty() -> None:
    # Execute
    all_nan = mean_metrics([{"auroc": float("nan")}, {"auroc": float("nan")}])

    # Assert
    assert math.isnan(all_nan["auroc"])
    assert mean_metrics([]) == {}


def test_roc_points_match_sklearn_and_are_json_ready() -> None:
    # Execute
    points = roc_points(Y_TRUE, Y_PROB)
    fpr, tpr, _ = roc_curve(Y_TRUE, Y_PROB)

    # Assert
    np.testing.assert_allclose(points["fpr"], fpr)
    np.testing.assert_allclose(points["tpr"], tpr)
    assert points["fpr"][0] == 0.0 and points["tpr"][-1] == 1.0
    json.dumps(points, allow_nan=False)


@pytest.mark.parametrize("ties", ["none", "rounded", "float32"])
def test_roc_points_equal_sklearn_exactly_with_ties(ties: str) -> None:
    # Prepare: many sizes and balances; scores with heavy ties, float32 ties, or none
    rng = np.random.default_rng(7)
    for _ in range(60):
        n = int(rng.integers(2, 2_000))
        y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
        y[:2] = [0, 1]
        p = rng.random(n)
        p = {"none": p, "rounded": np.round(p, 1), "float32": p.astype(np.float32).astype(np.float64)}[ties]

        # Execute
        points = roc_points(y, p, max_points=10**9)
        fpr, tpr, _ = roc_curve(y, p)

        # Assert: the same points, bit for bit
        np.testing.assert_array_equal(points["fpr"], fpr)
        np.testing.assert_array_equal(points["tpr"], tpr)


def test_roc_points_single_class_is_empty() -> None:
    # Execute / Assert
    assert roc_points(np.zeros(3, int), np.array([0.1, 0.5, 0.9])) == {"fpr": [], "tpr": []}


def test_calibration_points_match_sklearn() -> None:
    # Prepare: include probabilities exactly on bin edges and at 0 and 1
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.random(300), [0.0, 0.1, 0.5, 1.0]])
    y = (rng.random(p.size) < p).astype(int)

    # Execute
    points = calibration_points(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)

    # Assert
    np.testing.assert_allclose(points["fraction_positive"], prob_true)
    np.testing.assert_allclose(points["mean_predicted"], prob_pred)
    assert sum(points["count"]) == p.size
    json.dumps(points, allow_nan=False)


def test_calibration_points_skip_empty_bins_and_allow_one_class() -> None:
    # Execute
    points = calibration_points(np.ones(3, int), np.array([0.05, 0.07, 0.95]), n_bins=4)

    # Assert
    assert points == {
        "mean_predicted": pytest.approx([0.06, 0.95]),
        "fraction_positive": [1.0, 1.0],
        "count": [2.0, 1.0],
    }
    with pytest.raises(ValueError, match="n_bins"):
        calibration_points(np.ones(3, int), np.ones(3), n_bins=0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_closed_forms_match_sklearn(seed) -> None:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.uniform(0, 1, 500), 2)  # rounding makes ties, which AUROC counts half
    p[:5] = [0.0, 1.0, 1e-20, 1 - 1e-17, 0.5]

    m = compute_metrics(y, p)

    np.testing.assert_allclose(m["auroc"], roc_auc_score(y, p), rtol=1e-12)
    np.testing.assert_allclose(m["brier"], brier_score_loss(y, p), rtol=1e-12)
    np.testing.assert_allclose(m["log_loss"], log_loss(y, p), rtol=1e-12)


def test_json_safe_turns_nan_and_numpy_values_into_plain_json() -> None:
    from fedhealth.ml.metrics import json_safe

    value = {
        "auroc": float("nan"),
        "n": np.float32(3.0),
        "curve": np.array([0.5, np.inf]),
        "k": (1, "a"),
    }

    safe = json_safe(value)

    assert safe == {"auroc": None, "n": 3.0, "curve": [0.5, None], "k": [1, "a"]}
    json.dumps(safe, allow_nan=False)
