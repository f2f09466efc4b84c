"""How far each site's update moves the global model, and which moves are far out of line.

The server screens a round's updates before aggregating them: one site must not be able to
drag the global model anywhere it likes. ``update_distance`` measures each update against the
global model it started from; ``find_outliers`` compares each distance with the *other*
updates' median (leave-one-out), so that with two sites a huge update is caught while the
honest one is kept, which a median over all sites cannot do (with two values it sits halfway).

Pure functions over NumPy arrays, no Django; distances are L2 norms in the weights' own units.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["find_outliers", "update_distance"]


def update_distance(
    weights: Mapping[str, npt.NDArray[np.floating[Any]]],
    previous: Mapping[str, npt.NDArray[np.floating[Any]]],
) -> float:
    """L2 distance ``sqrt(sum over parameters of ||w - p||^2)`` of an update from the model.

    Args:
        weights: the site's new weights (float32 arrays, names and shapes as ``previous``;
            run ``check_update`` first).
        previous: the global model the site started from.

    Returns:
        The distance, >= 0, in the weights' units; ``math.inf`` if any weight of either is
        NaN or Inf (an update that is not finite is infinitely far). Computed in float64 one
        parameter at a time: the only temporary is one float64 copy of one tensor.

    Raises:
        ValueError: a parameter of ``previous`` missing from ``weights``, an extra one, or a
            shape mismatch, naming the parameter.
    """
    if weights.keys() != previous.keys():
        missing = sorted(set(previous) - set(weights))
        extra = sorted(set(weights) - set(previous))
        raise ValueError(
            f"weights and previous differ in parameters: missing {missing}, extra {extra}"
        )
    total = 0.0
    for name, reference in previous.items():
        array = weights[name]
        if array.shape != reference.shape:
            raise ValueError(
                f"parameter {name!r} has shape {array.shape}, expected {reference.shape}"
            )
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled just below
            diff = np.subtract(array, reference, dtype=np.float64).reshape(-1)
            total += float(np.dot(diff, diff))
        del diff
        if not math.isfinite(total):
            return math.inf
    return math.sqrt(total)


def find_outliers(distances: Mapping[str, float], factor: float) -> dict[str, str]:
    """The sites whose update is more than ``factor`` x the others' median distance away.

    Each site is compared with the median of the *other* sites' finite distances
    (leave-one-out): with two sites at 1.0 and 1e6 and ``factor=10``, the second is an
    outlier (1e6 > 10 x 1.0) and the first is not (1.0 <= 10 x 1e6).

    Args:
        distances: site -> ``update_distance`` of its update (>= 0, or ``inf``/``nan``).
        factor: how many times the others' median a distance may reach, finite and >= 1
            (an experiment's ``outlier_factor``, default 10).

    Returns:
        site -> reason (naming the distance, the median and their ratio), in input order, for
        each outlier. Edge cases:

        * fewer than two sites: nothing to compare with, no outlier;
        * a non-finite distance (NaN, Inf) is always an outlier, and is left out of the
          medians the other sites are compared with;
        * a site whose other sites have no finite distance is kept (nothing to compare);
        * if the others' median is 0 (they did not move the model at all), any distance
          above 0 is an outlier: ``factor x 0`` is the limit, and one site alone moving the
          model is what this guards against.

    Raises:
        ValueError: ``factor`` not a finite number >= 1, or a negative distance.
    """
    if (
        isinstance(factor, bool)
        or not isinstance(factor, int | float)
        or not (math.isfinite(factor) and factor >= 1)
    ):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    for site, distance in distances.items():
        if distance < 0:
            raise ValueError(f"distance of {site!r} must be >= 0, got {distance!r}")
    if len(distances) < 2:
        return {}
    finite = {site: d for site, d in distances.items() if math.isfinite(d)}
    outliers: dict[str, str] = {}
    for site, distance in distances.items():
        if not math.isfinite(distance):
            outliers[site] = f"distance from the global model is not finite ({distance})"
            continue
        others = [d for other, d in finite.items() if other != site]
        if not others:
            continue
        median = statistics.median(others)
        if distance <= factor * median:
            continue
        if median == 0:
            outliers[site] = (
                f"distance from the global model {distance:.3g} while the other updates' "
                f"median is 0 (limit {factor:g} x the median)"
            )
        else:
            outliers[site] = (
                f"distance from the global model {distance:.3g} is {distance / median:.3g} "
                f"times the other updates' median {median:.3g} (limit {factor:g})"
            )
    return outliers
