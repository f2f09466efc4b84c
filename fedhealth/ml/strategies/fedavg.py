"""Federated Averaging (FedAvg).

McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017), "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS. https://arxiv.org/abs/1602.05629

The new global model is the mean of the sites' models weighted by their number of training
rows: ``w = sum_k n_k w_k / sum_k n_k``.

The updates are streamed: one float64 accumulator of model size is kept, each update is checked
and folded in, then dropped. Peak memory is about the accumulator (2x the float32 model), one
update in flight, and the float32 result, whatever the number of sites.

The products ``n_k * w_k`` are computed in float64 too: under NumPy 2's promotion rules
(NEP 50) a float32 array times a Python float runs in float32, where 3e38 x (2**31 - 1)
overflows to inf; the scale is therefore a ``np.float64``. A non-finite or implausible mean is
refused (``check_aggregate``), checked in float64 before the float32 cast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import AggregateResult, Rejected, Strategy
from fedhealth.ml.strategies.checks import check_aggregate, screen
from fedhealth.ml.types import FloatArray, Update, Weights

# Elements per chunk of ``_accumulate``: a 512 KiB float64 scratch stays in L2 cache, which
# measured faster than whole-array ufuncs and avoids a model-sized temporary.
_CHUNK = 1 << 16


def _accumulate(
    acc: npt.NDArray[np.float64],
    array: FloatArray,
    scale: np.float64,
    scratch: npt.NDArray[np.float64],
) -> None:
    """In place ``acc += scale * array`` in float64, chunk by chunk (``scratch``: >= _CHUNK).

    ``scale`` must be a ``np.float64``: with a Python float, NEP 50 would run the multiply's
    loop in ``array``'s float32 (overflowing, and rounding the scale to 24 bits) before
    casting into the float64 scratch.
    """
    flat_acc = acc.reshape(-1)  # a view: the accumulator is C-contiguous
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        tmp = scratch[: part.size]
        out = flat_acc[start : start + _CHUNK]
        np.multiply(part, scale, out=tmp, dtype=np.float64)
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
        update is valid, or with ``refused`` set if the mean is not finite and plausible.
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
            scale = np.float64(update.num_samples)
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
            problem = check_aggregate({name: summed})  # in float64: the cast could overflow
            if problem is not None:
                return AggregateResult.refusal(problem, accepted, rejected, int(total))
            weights[name] = summed.astype(np.float32)  # popped: each float64 buffer freed in turn
        return AggregateResult(
            weights=weights, accepted=accepted, rejected=rejected, num_samples=int(total)
        )
