"""Validation of incoming updates, run by every strategy on every update.

A hospital's upload can be truncated, come from a different model version, or have diverged
(NaN/Inf). One bad update must not poison the global model, so each is checked against the
current global model and, if invalid, set aside with a reason an operator can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from fedhealth.ml.types import Update, Weights


@dataclass(frozen=True)
class Rejected:
    """An update that was not used, and why (shown to operators as is)."""

    site: str
    reason: str


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def check_update(update: Update, reference: Weights) -> str | None:
    """Return why ``update`` cannot be aggregated against ``reference``, or None if it can.

    Checks, in order: ``num_samples`` is a positive integer; the parameter names are exactly
    those of ``reference`` (order is irrelevant); each parameter is a float32 ndarray of the
    reference's shape with only finite values. Cost: one ``np.isfinite`` pass per array, with a
    bool temporary of at most one tensor (1 byte per element).
    """
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        return f"num_samples must be an integer, got {type(n).__name__}"
    if n <= 0:
        return f"num_samples must be positive, got {n}"

    weights = update.weights
    if weights.keys() != reference.keys():
        missing = [k for k in reference if k not in weights]
        extra = [k for k in weights if k not in reference]
        problems = []
        if missing:
            problems.append(f"missing parameters: {_names(missing)}")
        if extra:
            problems.append(f"unexpected parameters: {_names(extra)}")
        return "; ".join(problems)

    for name, expected in reference.items():
        array = weights[name]
        if not isinstance(array, np.ndarray):
            return f"parameter {name!r} is not a NumPy array (got {type(array).__name__})"
        if array.dtype != np.float32:
            return f"parameter {name!r} has dtype {array.dtype}, expected float32"
        if array.shape != expected.shape:
            return f"parameter {name!r} has shape {array.shape}, expected {expected.shape}"
        if not np.isfinite(array).all():
            # Only on the failure path: say which kind, to tell divergence from corruption.
            nan = int(np.isnan(array).sum())
            inf = int(np.isinf(array).sum())
            return f"parameter {name!r} contains non-finite values ({nan} NaN, {inf} Inf)"
    return None


def screen(
    updates: Iterable[Update], reference: Weights, rejected: list[Rejected]
) -> Iterator[Update]:
    """Lazily yield the valid updates, appending a ``Rejected`` to ``rejected`` for the others.

    Besides ``check_update``, a second update from an already-seen (non-empty) site is
    rejected, so that a retried upload cannot count twice. Iterates ``updates`` once and holds
    no reference to past updates, so a generator input keeps memory O(one update).
    """
    if not reference:
        raise ValueError("the reference (previous global) model has no parameters")
    seen: set[str] = set()
    for index, update in enumerate(updates):
        label = update.site or f"<update {index}>"
        reason = check_update(update, reference)
        if reason is None and update.site in seen:
            reason = "duplicate update from this site in the same round"
        if reason is not None:
            rejected.append(Rejected(site=label, reason=reason))
            continue
        if update.site:
            seen.add(update.site)
        yield update
        del update  # else it stays alive while ``updates`` loads the next one
