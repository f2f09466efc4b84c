"""Trimmed mean: coordinate-wise mean after dropping the extremes.

Yin, Chen, Ramchandran, Bartlett (2018), "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML. https://arxiv.org/abs/1803.01498

For each coordinate, the values of the ``k`` valid updates are sorted, the ``floor(beta * k)``
smallest and largest are dropped, and the rest averaged, unweighted (as in the paper). With
``beta = 0`` this is the plain mean; as ``beta`` nears 0.5 it approaches the median.
Materialises all valid updates (memory O(number of sites x model size)).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import CoordinateWiseStrategy, check_param


class TrimmedMean(CoordinateWiseStrategy):
    """Coordinate-wise beta-trimmed mean.

    Args:
        beta: fraction trimmed from *each* side, ``0 <= beta < 0.5``. The default 0.1 trims
            nothing below 10 sites; with few hospitals, raise it (e.g. 0.2 trims one of 5).
    """

    name: ClassVar[str] = "trimmed_mean"

    def __init__(self, *, beta: float = 0.1) -> None:
        self.beta = check_param("beta", beta, low=0.0, high=0.5, high_open=True)

    def params(self) -> dict[str, float]:
        """``{"beta": beta}``."""
        return {"beta": self.beta}

    def _combine(
        self, stacked: npt.NDArray[np.float64], num_samples: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        k = stacked.shape[0]
        # round() first so that e.g. 0.29 * 100 = 28.999... still trims 29; beta < 0.5 always
        # leaves at least one value per coordinate.
        cut = math.floor(round(self.beta * k, 9))
        kept = np.sort(stacked, axis=0)[cut : k - cut]
        mean: npt.NDArray[np.float64] = kept.mean(axis=0)
        return mean
