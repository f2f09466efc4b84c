"""Binary-classification metrics for per-site evaluation and the web UI's plots.

Every threshold metric is computed for the schema's *positive class* (``positive``: the
label value of the condition to detect; the default vitals detect ``healthy = 0``):
sensitivity is the share of positive-class rows flagged, specificity the share of the
other class passed, precision and F1 are the positive class's, ROC curves plot its true
positive rate and confusion counts call it "positive". Models still output the
probability of label 1; the functions turn it around when ``positive`` is 0. Accuracy,
balanced accuracy, AUROC, Brier and log loss do not depend on which class is positive.

Ranking and probabilistic scores (AUROC, log loss, Brier) use closed forms held to
scikit-learn's. The threshold metrics are derived from the confusion counts with
sklearn's formulas, which lets the undefined cases be handled explicitly:

* one class only in ``y_true`` (a site whose rows all carry one label): ``auroc`` and
  ``balanced_accuracy`` are NaN, and so is the recall of the missing class
  (``sensitivity`` without positives, ``specificity`` without negatives); without
  positive-class rows ``precision`` and ``f1`` are NaN as well;
* positives present but none predicted: ``precision`` is 0 (sklearn's
  ``zero_division=0``), and ``f1`` is 0 when there are no true positives either.

NaN means "not defined on this data". It never leaves a site as a number: JSON carries
it as null (``json_safe``), pages and exports show "n/a", and ``mean_metrics`` averages
each key over the sites where it is defined (``defined_counts`` says over how many).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhealth.ml.types import Metrics

__all__ = [
    "MAX_CALIBRATION_BINS",
    "MAX_ROC_POINTS",
    "METRIC_KEYS",
    "calibration_points",
    "compute_metrics",
    "confusion",
    "defined_counts",
    "mean_metrics",
    "roc_points",
]

METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "auroc",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "brier",
    "log_loss",
    "n",
)

# The most points a site sends of an evaluation's curves (the server refuses more):
# an ROC curve is thinned to MAX_ROC_POINTS; a calibration curve has one point per bin.
MAX_ROC_POINTS = 1001
MAX_CALIBRATION_BINS = 100

_NAN = float("nan")
_EPS = float(np.finfo(np.float64).eps)  # sklearn's log_loss clips at the dtype's eps


def _check(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(y_true as int64 0/1, y_prob as float64)``, both shape (n,)."""
    t = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"y_true and y_prob must be 1-D of equal length, got {t.shape}, {p.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if not (np.isfinite(p).all() and (p >= 0.0).all() and (p <= 1.0).all()):
        raise ValueError("y_prob must contain probabilities in [0, 1]")
    return t.astype(np.int64), p


def _div(num: float, den: float, undefined: float) -> float:
    return num / den if den else undefined


def _check_positive(positive: int) -> int:
    if isinstance(positive, bool) or positive not in (0, 1):
        raise ValueError(f"positive must be the label value 0 or 1, got {positive!r}")
    return int(positive)


def _oriented(t: np.ndarray, p: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 1 = positive class, and the probability of the positive class."""
    return (t, p) if positive == 1 else (1 - t, 1.0 - p)


def confusion(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5, *, positive: int = 1
) -> dict[str, int]:
    """Confusion counts ``{"tn", "fp", "fn", "tp"}`` for the ``positive`` class.

    The predicted label is 1 when ``y_prob >= threshold`` (``y_prob``: probability of
    label 1); "positive" is the predicted or true label ``positive``.
    """
    t, p = _check(y_true, y_prob)
    pred = (p >= threshold).astype(np.int64)
    if _check_positive(positive) == 0:
        t, pred = 1 - t, 1 - pred
    tn, fp, fn, tp = np.bincount(2 * t + pred, minlength=4).tolist()
    return {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def _average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks of ``p``, ties sharing their average rank (SciPy's ``rankdata``;
    written out because importing scipy.stats costs ~0.5 s of every process start)."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _auroc(t: np.ndarray, p: np.ndarray, n_pos: int, n_neg: int) -> float:
    """AUROC as the Mann-Whitney statistic: the chance a random positive scores above a
    random negative, ties counting half (exactly sklearn's trapezoidal ROC area)."""
    ranks = _average_ranks(p)
    return float((ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compute_metrics(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5, *, positive: int = 1
) -> Metrics:
    """Metrics of predicted probabilities against 0/1 labels.

    Args:
        y_true: (n,) labels in {0, 1}.
        y_prob: (n,) predicted probabilities of label 1, in [0, 1].
        threshold: ``y_prob >= threshold`` predicts label 1.
        positive: the label value of the positive class (the condition to detect).

    Returns:
        Exactly ``METRIC_KEYS``: accuracy, balanced_accuracy, auroc, sensitivity (recall of
        the positive class), specificity (recall of the other), precision, f1, brier (mean squared error
        of the probabilities), log_loss (mean binary cross-entropy, natural log), n (rows,
        as float). Undefined values are NaN (see the module docstring); with n == 0 every
        metric is NaN and n is 0.0.

    Raises:
        ValueError: on mismatched shapes, labels outside {0, 1} or probabilities outside
            [0, 1].
    """
    t, p = _check(y_true, y_prob)
    n = t.shape[0]
    if n == 0:
        return {key: (0.0 if key == "n" else _NAN) for key in METRIC_KEYS}
    positive = _check_positive(positive)
    c = confusion(t, p, threshold, positive=positive)
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
    sensitivity = _div(tp, tp + fn, _NAN)
    specificity = _div(tn, tn + fp, _NAN)
    both_classes = tp + fn > 0 and tn + fp > 0
    has_positives = tp + fn > 0
    # AUROC, Brier and log loss are symmetric in the classes: computed on label 1.
    # _check has validated the inputs. sklearn's re-validation costs more than these
    # metrics (~15 ms per call, paid several times per site per round), so AUROC, Brier
    # and log loss use their closed forms; tests hold them to sklearn's to 1e-12.
    pf = p.astype(np.float64)
    n1 = int(t.sum())  # AUROC of label 1 (equal to label 0's): the counts of the raw labels
    auroc = _auroc(t, pf, n1, n - n1) if both_classes else _NAN
    brier = float(np.mean((pf - t) ** 2))
    clipped = np.clip(pf, _EPS, 1.0 - _EPS)
    logloss = float(-np.mean(t * np.log(clipped) + (1 - t) * np.log1p(-clipped)))
    return {
        "accuracy": (tp + tn) / n,
        # With one class, "balanced" accuracy is plain accuracy: averaging it with other
        # sites' would pass a majority-class model off as balanced. Undefined instead.
        "balanced_accuracy": (sensitivity + specificity) / 2 if both_classes else _NAN,
        "auroc": auroc,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": _div(tp, tp + fp, 0.0) if has_positives else _NAN,
        "f1": _div(2 * tp, 2 * tp + fp + fn, 0.0) if has_positives else _NAN,
        "brier": brier,
        "log_loss": logloss,
        "n": float(n),
    }


def _defined(value: Any) -> bool:
    return (
        value is not None
        and not isinstance(value, bool)
        and isinstance(value, int | float | np.number)
        and math.isfinite(float(value))
    )


def mean_metrics(items: Sequence[Mapping[str, Any]]) -> Metrics:
    """Unweighted mean over sites, key by key, over the sites where the key is defined
    (a site lacking it, or holding NaN or None there, is left out).

    A key defined nowhere is NaN (without numpy's "mean of empty slice" warning).
    Exception: ``n`` is *summed*, so it stays the number of rows evaluated. Keys keep
    their first-seen order; an empty ``items`` gives ``{}``. ``defined_counts`` gives
    the number of sites behind each mean.
    """
    keys: dict[str, None] = {}
    for item in items:
        keys.update(dict.fromkeys(item))
    result: Metrics = {}
    for key in keys:
        finite = [float(item[key]) for item in items if _defined(item.get(key))]
        if key == "n":
            result[key] = float(sum(finite))
        else:
            result[key] = float(np.mean(finite)) if finite else _NAN
    return result


def defined_counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """For each key of ``items``: on how many of them it is defined (a finite number).

    Beside ``mean_metrics``: "AUROC 0.81, mean over 2 of 3 sites" when one site has a
    single class.
    """
    keys: dict[str, None] = {}
    for item in items:
        keys.update(dict.fromkeys(item))
    return {key: sum(1 for item in items if _defined(item.get(key))) for key in keys}


def roc_points(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    max_points: int = MAX_ROC_POINTS,
    *,
    positive: int = 1,
) -> dict[str, list[float]]:
    """ROC curve as ``{"fpr": [...], "tpr": [...]}`` (JSON-ready, from (0, 0) to (1, 1)).

    Collinear points are dropped (sklearn ``drop_intermediate``). A curve still longer
    than ``max_points`` (its corners grow with the test rows: ~30,000 for 100,000 rows)
    keeps ``max_points`` evenly spaced corners, both ends included: plenty to draw, and
    within what the server accepts from a site. With a single class in ``y_true`` the
    curve is undefined and both lists are empty. The rates are the ``positive`` class's.
    """
    t, p = _oriented(*_check(y_true, y_prob), _check_positive(positive))
    if t.size == 0 or t.min() == t.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr = _roc_curve(t, p)
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _roc_curve(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ``roc_curve(t, p)`` (``drop_intermediate=True``) without sklearn: its
    import cost ~2.4 s in each worker process and its input checks a few ms per call.
    ``t``: 0/1 with both classes present; ``p``: scores. Same points, same order."""
    desc = np.argsort(p, kind="mergesort")[::-1]
    score, truth = p[desc], t[desc]
    # The last row of each run of equal scores is a threshold: ties move together.
    ends = np.r_[np.flatnonzero(np.diff(score)), truth.size - 1]
    tps = np.cumsum(truth, dtype=np.float64)[ends]
    fps = 1.0 + ends - tps
    if fps.size > 2:  # drop collinear points (a corner is where either slope changes)
        corners = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[corners], tps[corners]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return fps / fps[-1], tps / tps[-1]


def calibration_points(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, n_bins: int = 10, *, positive: int = 1
) -> dict[str, list[float]]:
    """Reliability diagram over ``n_bins`` equal-width bins of [0, 1].

    Bins as sklearn's ``calibration_curve(strategy="uniform")``; empty bins are left out.

    Returns:
        ``{"mean_predicted": [...], "fraction_positive": [...], "count": [...]}``, one entry
        per non-empty bin in increasing order: mean predicted probability of the
        ``positive`` class in the bin, fraction of rows of that class in it, and its number
        of rows (as float).
    """
    if not 1 <= n_bins <= MAX_CALIBRATION_BINS:
        raise ValueError(f"n_bins must be 1 to {MAX_CALIBRATION_BINS}, got {n_bins}")
    t, p = _oriented(*_check(y_true, y_prob), _check_positive(positive))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p)
    count = np.bincount(bins, minlength=n_bins)
    sum_prob = np.bincount(bins, weights=p, minlength=n_bins)
    sum_true = np.bincount(bins, weights=t, minlength=n_bins)
    nz = count > 0
    return {
        "mean_predicted": (sum_prob[nz] / count[nz]).tolist(),
        "fraction_positive": (sum_true[nz] / count[nz]).tolist(),
        "count": count[nz].astype(np.float64).tolist(),
    }


def stored_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as the server stores them: JSON-safe, and every one of ``METRIC_KEYS`` that
    is undefined (NaN, or left out: an agent sends defined metrics only) present as None.
    Empty stays empty (no figures at all)."""
    safe = json_safe(dict(metrics))
    if not safe:
        return safe
    return {**{key: None for key in METRIC_KEYS if key != "n"}, **safe}


def json_safe(obj: Any) -> Any:
    """``obj`` with NumPy scalars and arrays made plain, and NaN/inf floats made None.

    Metrics hold NaN where they are undefined (AUROC with one class); JSON has no NaN,
    so anything written or served as JSON goes through here.
    """
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
