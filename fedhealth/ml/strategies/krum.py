"""Krum and Multi-Krum: keep the updates closest to their neighbours, drop the rest.

Blanchard, El Mhamdi, Guerraoui, Stainer (2017), "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS.
https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html

With ``n`` valid updates of which at most ``f`` are Byzantine (arbitrary, possibly colluding),
each update ``i`` gets the score ``s(i) = sum of ||w_i - w_j||^2`` over its ``n - f - 2``
nearest other updates ``j`` (squared L2 distance over all parameters). Krum returns the update
with the lowest score; Multi-Krum averages the ``m`` updates with the lowest scores (scores
computed once, as in the paper). An honest update sits among ``n - f`` honest ones, so its
neighbourhood is tight; a far-away update pays for its distance to everyone. The guarantee
needs ``n >= 2f + 3``; with fewer valid updates this module refuses (``refused_code``
``"too_few"``) rather than guess, and the caller keeps the previous global model.

The average of the ``m`` selected updates is *unweighted*, as in the paper: ``num_samples``
is reported by the sites themselves, so weighting by it would let one Byzantine update that
slipped into the selection claim ``2**31 - 1`` rows and dominate the mean, which Krum is there
to prevent (Flower's ``aggregate_krum`` does weight by sample count). The other valid updates
are listed in ``rejected`` with code ``"not_selected"`` and their rank.

Krum (``select=1``) publishes one site's own update as the global model; Multi-Krum's default
``select=3`` averages three, so no single site's model is handed out. Memory: the valid updates
are held (O(n x model size)) plus one float64 parameter stacked across them; time
O(n^2 x model size) for the distances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import AggregateResult, Rejected, Strategy, check_count
from fedhealth.ml.strategies.checks import NOT_SELECTED, TOO_FEW, Problem, check_aggregate, screen
from fedhealth.ml.types import Update, Weights

# Sanity ceiling for both parameters (an experiment has far fewer sites).
_MAX_COUNT = 1000


def pairwise_sq_distances(models: Sequence[Weights]) -> npt.NDArray[np.float64]:
    """Squared L2 distances between ``models`` over all their parameters.

    Args:
        models: ``n`` weight mappings with the same names and shapes (checked updates).

    Returns:
        A symmetric ``(n, n)`` float64 matrix with a zero diagonal. Computed parameter by
        parameter in float64 from explicit differences (no ``|a|^2 + |b|^2 - 2ab``
        cancellation), with temporaries of at most ``n`` x one parameter.
    """
    n = len(models)
    distances = np.zeros((n, n), dtype=np.float64)
    if n == 0:
        return distances
    for name in models[0]:
        stacked = np.stack([m[name].reshape(-1) for m in models], dtype=np.float64)
        for i in range(n - 1):
            diff = stacked[i + 1 :] - stacked[i]
            row = np.einsum("ij,ij->i", diff, diff)
            distances[i, i + 1 :] += row
            distances[i + 1 :, i] += row
    return distances


def krum_scores(distances: npt.NDArray[np.float64], byzantine: int) -> npt.NDArray[np.float64]:
    """Krum's score of each update: the sum of its ``n - f - 2`` smallest squared distances
    to the *other* updates (``distances`` as from ``pairwise_sq_distances``, shape ``(n, n)``,
    ``n >= 2f + 3``). Returns shape ``(n,)``, lower is better."""
    n = distances.shape[0]
    neighbours = n - byzantine - 2
    # Drop each row's own (diagonal) entry explicitly: sorting and skipping the first value,
    # as Flower does, drops the wrong one when two updates are identical (distance 0 too).
    others = distances[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    nearest = np.sort(others, axis=1)[:, :neighbours]
    scores: npt.NDArray[np.float64] = nearest.sum(axis=1)
    return scores


class Krum(Strategy):
    """Krum (``select=1``) or Multi-Krum (``select=m > 1``) over the valid updates.

    Args:
        byzantine: ``f``, the number of Byzantine sites tolerated, whole number in
            [0, 1000]. Needs at least ``2f + 3`` valid updates in a round (5 with ``f=1``).
        select: ``m``, how many of the best-scored updates are averaged (unweighted), whole
            number in [1, 1000]; 1 is Krum. Needs ``m <= n - f`` valid updates besides, so
            that the average cannot be forced to include the ``f`` worst-scored ones.
    """

    name: ClassVar[str] = "krum"

    def __init__(self, *, byzantine: float = 1, select: float = 1) -> None:
        self.byzantine = check_count("byzantine", byzantine, low=0, high=_MAX_COUNT)
        self.select = check_count("select", select, low=1, high=_MAX_COUNT)

    def params(self) -> dict[str, float]:
        """``{"byzantine": f, "select": m}`` (ints)."""
        return {"byzantine": self.byzantine, "select": self.select}

    def required(self) -> int:
        """The fewest valid updates this strategy aggregates: ``max(2f + 3, f + m)``."""
        return max(2 * self.byzantine + 3, self.byzantine + self.select)

    def aggregate(
        self,
        previous: Weights,
        updates: Iterable[Update],
        *,
        failures: Sequence[Rejected] = (),
    ) -> AggregateResult:
        """Score the valid updates and average the ``select`` best (unweighted).

        Refuses (``weights=None``, ``refused_code="too_few"``) with fewer than
        ``required()`` valid updates, and a non-finite or implausible result. The valid
        updates not selected go to ``rejected`` with code ``"not_selected"``.
        """
        rejected = list(failures)
        valid = list(screen(updates, previous, rejected))
        if not valid:
            return AggregateResult(weights=None, rejected=rejected)
        sites = [u.site for u in valid]
        total = sum(int(u.num_samples) for u in valid)
        n, f, m = len(valid), self.byzantine, self.select
        if n < self.required():
            why = (
                f"{type(self).__name__} with byzantine={f} and select={m} needs at least "
                f"{self.required()} valid updates (2f + 3 = {2 * f + 3}, f + select = {f + m}), "
                f"got {n}"
            )
            return AggregateResult.refusal(Problem(TOO_FEW, why), sites, rejected, total)

        scores = krum_scores(pairwise_sq_distances([u.weights for u in valid]), f)
        order = np.argsort(scores, kind="stable")  # ties: arrival order
        chosen = sorted(int(i) for i in order[:m])
        for rank, index in enumerate(order[m:], start=m + 1):
            update = valid[int(index)]
            rejected.append(
                Rejected(
                    update.site,
                    f"not selected by {type(self).__name__}: score {scores[index]:.3g} ranked "
                    f"{rank} of {n}; the {m} lowest are used",
                    NOT_SELECTED,
                )
            )

        accepted = [valid[i].site for i in chosen]
        used = sum(int(valid[i].num_samples) for i in chosen)
        weights: Weights = {}
        for name in previous:
            mean = np.mean(
                np.stack([valid[i].weights[name] for i in chosen], dtype=np.float64), axis=0
            )
            problem = check_aggregate({name: mean})  # in float64: the cast could overflow
            if problem is not None:
                return AggregateResult.refusal(problem, accepted, rejected, used)
            weights[name] = mean.astype(np.float32)
        return AggregateResult(
            weights=weights, accepted=accepted, rejected=rejected, num_samples=used
        )


class MultiKrum(Krum):
    """Multi-Krum: ``Krum`` averaging the ``select`` best-scored updates (default 3).

    The default averages three updates, so the global model is never one site's own
    (privacy) and is less noisy than Krum's single pick; with ``byzantine=1`` it needs 5
    valid updates, like Krum.
    """

    name: ClassVar[str] = "multikrum"

    def __init__(self, *, byzantine: float = 1, select: float = 3) -> None:
        super().__init__(byzantine=byzantine, select=select)
