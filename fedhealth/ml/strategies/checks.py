"""Validation of incoming updates and of aggregates, run by every strategy.

A hospital's upload can be truncated, come from a different model version, have diverged
(NaN/Inf) or be crafted to wreck the model (weights of 3e38 with ``num_samples = 2**31 - 1``).
One bad update must not poison the global model, so each is checked against the current global
model and, if unusable, set aside with a reason an operator can act on and a machine code; and
an aggregate that is not finite and plausible is never returned as a new global model.

Machine codes of a ``Rejected`` (``Rejected.code``) and of a refused aggregate
(``AggregateResult.refused_code``), stable so that callers can map them to their own messages:

* ``"invalid"`` (``INVALID``): ``num_samples``, parameter names, shapes or dtype do not fit the
  model;
* ``"nonfinite"`` (``NONFINITE``): a NaN or an Inf in a parameter (or in the aggregate);
* ``"implausible"`` (``IMPLAUSIBLE``): a weight whose magnitude exceeds ``MAX_ABS_WEIGHT``;
* ``"duplicate"`` (``DUPLICATE``): a second update from the same site in one round;
* ``"outlier"`` (``OUTLIER``): for callers of ``fedhealth.ml.robust.find_outliers``: far from
  the global model compared with the round's other updates;
* ``"not_selected"`` (``NOT_SELECTED``): valid, but a selecting strategy (Krum) used others;
* ``"too_few"`` (``TOO_FEW``): (aggregate only) fewer valid updates than the strategy needs;
* ``"failed"`` (``FAILED``): the default for failures the caller passes in without a code.
  Callers may pass any code of their own (e.g. ``"missed_deadline"``); it is carried as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fedhealth.ml.types import Update, Weights

INVALID = "invalid"
NONFINITE = "nonfinite"
IMPLAUSIBLE = "implausible"
DUPLICATE = "duplicate"
OUTLIER = "outlier"
NOT_SELECTED = "not_selected"
TOO_FEW = "too_few"
FAILED = "failed"
CODES = frozenset(
    {INVALID, NONFINITE, IMPLAUSIBLE, DUPLICATE, OUTLIER, NOT_SELECTED, TOO_FEW, FAILED}
)

# The largest weight magnitude accepted in an update or an aggregate. HealthNet's inputs are
# standardised (mean 0, sd 1), so trained weights are O(1)-O(10); with the default local Adam
# (lr 3e-3) a weight moves by about lr per step, so even 10^6 local steps over a whole
# experiment stay under 1e4. A weight of 1e4 on a standardised feature moves a logit by 1e4
# per standard deviation while the sigmoid saturates within +-40: no useful model has one.
# The bound is 1,000x generous, yet keeps every square the strategies take ((2e4)^2 = 4e8 in
# FedOpt's second moment, Krum's squared distances) far from float32's 3.4e38.
MAX_ABS_WEIGHT = 1e4


@dataclass(frozen=True)
class Rejected:
    """An update that was not used: the site, why (shown to operators as is) and a code.

    ``code`` is one of the module's codes, or whatever the caller passed in for its own
    failures (timeouts, crashes); ``Rejected(site, reason)`` gets ``"failed"``.
    """

    site: str
    reason: str
    code: str = FAILED


class Problem(NamedTuple):
    """Why an update or an aggregate cannot be used: a machine ``code`` and a ``reason``."""

    code: str
    reason: str


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def array_problem(
    name: str, array: npt.NDArray[np.floating[Any]], *, what: str = "parameter"
) -> Problem | None:
    """Whether ``array`` holds a non-finite value or a magnitude above ``MAX_ABS_WEIGHT``.

    Cost: two reductions (min, max; NaN propagates through both), no temporary; the NaN/Inf
    counts are only computed on the failure path. ``what`` prefixes the parameter's name in
    the reason (e.g. ``"the aggregate's parameter"``).
    """
    low = float(np.min(array, initial=np.inf))
    high = float(np.max(array, initial=-np.inf))
    if array.size and not (np.isfinite(low) and np.isfinite(high)):
        # Say which kind, to tell divergence from corruption.
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        return Problem(
            NONFINITE, f"{what} {name!r} contains non-finite values ({nan} NaN, {inf} Inf)"
        )
    peak = max(-low, high) if array.size else 0.0
    if peak > MAX_ABS_WEIGHT:
        return Problem(
            IMPLAUSIBLE,
            f"{what} {name!r} has a weight of magnitude {peak:.3g}, above the plausible "
            f"bound {MAX_ABS_WEIGHT:g}",
        )
    return None


def update_problem(update: Update, reference: Weights) -> Problem | None:
    """Return why ``update`` cannot be aggregated against ``reference``, or None if it can.

    Checks, in order: ``num_samples`` is a positive integer; the parameter names are exactly
    those of ``reference`` (order is irrelevant); each parameter is a float32 ndarray of the
    reference's shape with only finite values, none of magnitude above ``MAX_ABS_WEIGHT``.
    Codes: ``"invalid"``, ``"nonfinite"``, ``"implausible"``. Cost: two reductions per array,
    no temporary on success.
    """
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        return Problem(INVALID, f"num_samples must be an integer, got {type(n).__name__}")
    if n <= 0:
        return Problem(INVALID, f"num_samples must be positive, got {n}")

    weights = update.weights
    if weights.keys() != reference.keys():
        missing = [k for k in reference if k not in weights]
        extra = [k for k in weights if k not in reference]
        problems = []
        if missing:
            problems.append(f"missing parameters: {_names(missing)}")
        if extra:
            problems.append(f"unexpected parameters: {_names(extra)}")
        return Problem(INVALID, "; ".join(problems))

    for name, expected in reference.items():
        array = weights[name]
        if not isinstance(array, np.ndarray):
            return Problem(
                INVALID, f"parameter {name!r} is not a NumPy array (got {type(array).__name__})"
            )
        if array.dtype != np.float32:
            return Problem(INVALID, f"parameter {name!r} has dtype {array.dtype}, expected float32")
        if array.shape != expected.shape:
            return Problem(
                INVALID, f"parameter {name!r} has shape {array.shape}, expected {expected.shape}"
            )
        problem = array_problem(name, array)
        if problem is not None:
            return problem
    return None


def check_update(update: Update, reference: Weights) -> str | None:
    """``update_problem``'s reason only: why ``update`` cannot be aggregated, or None."""
    problem = update_problem(update, reference)
    return None if problem is None else problem.reason


def check_aggregate(weights: Mapping[str, npt.NDArray[np.floating[Any]]]) -> Problem | None:
    """Return why an aggregate must not become the global model, or None if it may.

    Refused: any non-finite value (code ``"nonfinite"``) or any magnitude above
    ``MAX_ABS_WEIGHT`` (``"implausible"``), in any float dtype (check float64 sums before the
    float32 cast, whose overflow would warn). Every strategy calls this before returning.
    """
    for name, array in weights.items():
        problem = array_problem(name, array, what="the aggregate's parameter")
        if problem is not None:
            return problem
    return None


def screen(
    updates: Iterable[Update], reference: Weights, rejected: list[Rejected]
) -> Iterator[Update]:
    """Lazily yield the valid updates, appending a ``Rejected`` to ``rejected`` for the others.

    Besides ``update_problem``, a second update from an already-seen (non-empty) site is
    rejected (code ``"duplicate"``), so that a retried upload cannot count twice. Iterates
    ``updates`` once and holds no reference to past updates, so a generator input keeps
    memory O(one update).
    """
    if not reference:
        raise ValueError("the reference (previous global) model has no parameters")
    seen: set[str] = set()
    for index, update in enumerate(updates):
        label = update.site or f"<update {index}>"
        problem = update_problem(update, reference)
        if problem is None and update.site in seen:
            problem = Problem(DUPLICATE, "duplicate update from this site in the same round")
        if problem is not None:
            rejected.append(Rejected(site=label, reason=problem.reason, code=problem.code))
            continue
        if update.site:
            seen.add(update.site)
        yield update
        del update  # else it stays alive while ``updates`` loads the next one
