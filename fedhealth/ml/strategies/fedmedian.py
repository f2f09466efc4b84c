"""FedMedian: coordinate-wise median of the sites' models.

Yin, Chen, Ramchandran, Bartlett (2018), "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML. https://arxiv.org/abs/1803.01498

Each coordinate of the new model is the median of that coordinate across the valid updates,
unweighted (as in the paper and Flower's ``FedMedian``): a minority of corrupted or
malicious sites cannot pull it arbitrarily far, unlike a mean. Materialises all valid updates
(memory O(number of sites x model size)); computed in float64, one parameter at a time.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import CoordinateWiseStrategy


class FedMedian(CoordinateWiseStrategy):
    """Coordinate-wise median; with an even number of sites, the mean of the middle two."""

    name: ClassVar[str] = "fedmedian"

    def _combine(
        self, stacked: npt.NDArray[np.float64], num_samples: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        median: npt.NDArray[np.float64] = np.median(stacked, axis=0)
        return median
