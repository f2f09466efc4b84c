"""Federated Averaging (FedAvg).

McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017), "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS. https://arxiv.org/abs/1602.05629

The new global model is the mean of the sites' models weighted by their number of training
rows: ``w = sum_k n_k w_k / sum_k n_k``.

The updates are streamed: one float64 accumulator of model size is kept, each update is checked
and folded in, then dropped. Peak memory is about the accumulator (2x the float32 model), one
update in flight, and the float32 result, whatever the number of sites.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import AggregateResult, Rejected, Strategy
from fedhealth.ml.strategies.checks import screen
from fedhealth.ml.types import FloatArray, Update, Weights

# Elements per chunk of ``_accumulate``: a 512 KiB float64 scratch stays in L2 cache, which
# measured faster than whole-array ufuncs and avoids a model-sized temporary.
_CHUNK = 1 << 16


def _accumulate(
    acc: npt.NDArray[np.float64],
    array: FloatArray,
    scale: float,
    scratch: npt.NDArray[np.float64],
) -> None:
    """In place ``acc += scale * array`` in float64, chunk by chunk (``scratch``: >= _CHUNK)."""
    flat_acc = acc.reshape(-1)  # a view: the accumulator is C-contiguous
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        tmp = scratch[: part.size]
        out = flat_acc[start : start + _CHUNK]
        np.multiply(part, scale, out=tmp)
        np.add(out, tmp, out=out)


class FedAvg(Strategy):
    """Sample-weighted mean of the valid updates, streamed.

    Args: none. ``num_samples`` of each update is its weight; the result is float32.
    """

    name: ClassVar[str] = "fedavg"

    def aggregate(
        self,
        previous: Weights,
        updates: Iterable[Update],
        *,
        failures: Sequence[Rejected] = (),
    ) -> AggregateResult:
        """Weighted mean of the updates that pass ``check_update`` against ``previous``.

        Consumes ``updates`` once, holding one update at a time. Returns ``weights=None`` if no
        update is valid.
        """
        rejected = list(failures)
        accepted: list[str] = []
        total = 0
        acc: dict[str, npt.NDArray[np.float64]] = {}
        scratch = np.empty(_CHUNK, dtype=np.float64)
        for update in screen(updates, previous, rejected):
            if not acc:
                acc = {
                    name: np.zeros(ref.shape, dtype=np.float64) for name, ref in previous.items()
                }
            scale = float(update.num_samples)
            for name, array in update.weights.items():
                _accumulate(acc[name], array, scale, scratch)
            total += update.num_samples
            accepted.append(update.site)
            # Drop the last references before the generator loads the next update.
            del update, array
        if not accepted:
            return AggregateResult(weights=None, rejected=rejected)
        weights: Weights = {}
        for name in previous:
            summed = acc.pop(name)
            summed /= total
            weights[name] = summed.astype(np.float32)  # popped: each float64 buffer freed in turn
        return AggregateResult(
            weights=weights, accepted=accepted, rejected=rejected, num_samples=int(total)
        )
