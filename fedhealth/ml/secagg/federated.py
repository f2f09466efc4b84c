"""Secure aggregation inside a federated round: options, strategy compatibility, one round.

The unmasked result *is* FedAvg of the survivors (within the quantisation bound), so any
strategy that starts from the sample-weighted mean works on it: FedAvg, FedProx (its proximal
term is local), and the server optimisers FedAdam, FedYogi, FedAdagrad (they step from the
mean). They receive the mean as a single update carrying the survivors' total weight.
Robust rules (median, trimmed mean, Krum) need each site's update, which secure aggregation
exists to hide: they are refused.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedhealth.ml.strategies import AggregateResult, FedAvg, Rejected, Strategy
from fedhealth.ml.types import Update, Weights

from .errors import SecAggError
from .inprocess import secure_round
from .keys import RoundContext
from .server import check_threshold, default_threshold

AGGREGATE_SITE = "secure-aggregate"


def incompatibility(strategy: Strategy) -> str | None:
    """Why ``strategy`` cannot run on a secure sum, or None if it can."""
    if isinstance(strategy, FedAvg):
        return None
    return (
        f"strategy {strategy.name!r} needs each site's update (a robust rule compares them), "
        "and secure aggregation shows the server only their sum: use FedAvg, FedProx, FedAdam, "
        "FedYogi or FedAdagrad, or turn secure aggregation off"
    )


@dataclass(frozen=True)
class SecureOptions:
    """``threshold``: t (None: a majority of each site's holders, i.e. of all sites unless
    ``degree`` is set, at least 2); ``dropout``: probability
    that a site drops after sharing keys (simulation only); ``degree``: SecAgg+ neighbours
    (None: everyone); ``clip``: bound on each coordinate of a site's change per round."""

    threshold: int | None = None
    dropout: float = 0.0
    degree: int | None = None
    clip: float = 8.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"secure-aggregation dropout must be in [0, 1), got {self.dropout}")

    def threshold_for(self, n_sites: int) -> int:
        """The threshold for ``n_sites``; ValueError naming the allowed range if it is wrong."""
        if n_sites < 2:
            raise ValueError(f"secure aggregation needs at least 2 sites, got {n_sites}")
        sparse = self.degree is not None and self.degree < n_sites - 1
        holders = self.degree + 1 if sparse and self.degree is not None else n_sites
        t = default_threshold(holders) if self.threshold is None else self.threshold
        check_threshold(t, n_sites, self.degree)
        return t

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "threshold": self.threshold,
            "dropout": self.dropout,
            "degree": self.degree,
            "clip": self.clip,
        }


def secure_aggregate(
    strategy: Strategy,
    previous: Weights,
    updates: Sequence[Update],
    options: SecureOptions,
    ctx: RoundContext,
    *,
    seed: int,
) -> tuple[AggregateResult, list[str]]:
    """One secure round with simulated dropouts: ``(result, dropped sites)``.

    Below the threshold the result has ``weights=None`` (keep the previous model) and
    ``refused`` says why; it never falls back to the updates in the clear.
    """
    reason = incompatibility(strategy)
    if reason is not None:
        raise ValueError(reason)
    threshold = options.threshold_for(len(updates))
    rng = random.Random(f"{seed}:{ctx.session}:{ctx.round}")  # which sites drop: not secret
    dropped = [u.site for u in updates if rng.random() < options.dropout]
    max_weight = max(u.num_samples for u in updates)
    try:
        secure = secure_round(
            ctx,
            updates,
            previous,
            threshold=threshold,
            drop_after_sharing=dropped,
            clip=options.clip,
            max_weight=max_weight,
            degree=options.degree,
        )
    except SecAggError as exc:
        failed = [Rejected(s, "dropped after sharing keys (simulated)", "dropped") for s in dropped]
        return AggregateResult(
            weights=None, rejected=failed, refused=exc.message, refused_code=exc.code
        ), dropped
    outcome = strategy.aggregate(
        previous, [Update(secure.weights, secure.total_weight, AGGREGATE_SITE)]
    )
    outcome.accepted = list(secure.survivors)
    outcome.rejected = [
        Rejected(s, "dropped after sharing keys (simulated); its masks were removed", "dropped")
        for s in secure.dropped
    ]
    return outcome, dropped
