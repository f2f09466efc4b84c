"""Shared types of the Django-free federated-learning core.

Weights are an *ordered* mapping of parameter name -> float32 NumPy array, in the
order of ``model.state_dict()``. Using names (not a bare list, as Flower's NDArrays)
lets safetensors files be self-describing and lets the server check an update's
shapes parameter by parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Weights = dict[str, npt.NDArray[np.float32]]
Metrics = dict[str, float]


@dataclass(frozen=True)
class Update:
    """One site's contribution to a round: new weights and how many rows produced them."""

    weights: Weights
    num_samples: int
    site: str = ""
    metrics: Metrics = field(default_factory=dict)
