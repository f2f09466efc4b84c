"""Record-level differential privacy: the settings a site is asked for, and their accounting.

The mechanism is DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
each step samples every row independently with probability ``q = batch_size / rows``
(Poisson sampling), clips each row's gradient to ``clip_norm`` and adds Gaussian noise of
standard deviation ``noise_multiplier * clip_norm`` to the sum. Its privacy loss is
accounted with Opacus's RDP accountant (Mironov 2017; Mironov et al. 2019 for the sampled
Gaussian): one entry ``(noise_multiplier, q, steps)`` per round, composed across rounds
and across experiments on the same dataset.

The server's settings are a request. A site derives its own noise multiplier from the
target and its own row count (``derive_noise``), so that a site that trains every round
ends at or under the target, and it keeps its own ledger of spends
(``RoundSpend``) which it composes with ``composed_epsilon`` before each round.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "ALPHAS",
    "DEFAULT_CLIP_NORM",
    "DEFAULT_EPSILON",
    "DP_TRAIN_DEFAULTS",
    "PrivacySettings",
    "RoundSpend",
    "composed_epsilon",
    "default_delta",
    "derive_noise",
    "epsilon_for",
    "plan_round_spend",
    "sample_rate",
    "steps_per_round",
]

DEFAULT_EPSILON = 3.0
DEFAULT_CLIP_NORM = 1.0
# Local training settings for DP-SGD, chosen by measurement (bench/bench_dp.py, 4 IID sites
# of 1,500 training rows at epsilon 3; docs/benchmarks.md): the noise on each averaged
# gradient is sigma x clip / batch, and a larger batch needs a sigma that grows more
# slowly than the batch, so 256 rows per step (with a learning rate to match) lose
# about a third as much accuracy as the non-DP default of 32. A site smaller than about
# 1,000 training rows gets little sampling amplification at 256 and does better smaller.
DP_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 256, "lr": 0.03}
# Opacus's default RDP orders stop at 63; small noise multipliers reach their best bound at
# higher orders, so the list is extended (a tighter, still valid bound; no warning).
ALPHAS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *range(64, 256, 8),
    *range(256, 1025, 64),
)
# get_noise_multiplier's binary search stops within this of the target, from below.
_EPSILON_TOLERANCE = 0.01


# Opacus is imported inside the functions that use it: importing it configures the root
# logger (logging.basicConfig in opacus.utils.module_utils) and costs start-up time, and
# most processes that import the site-work contract never train with DP.


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def default_delta(rows: int) -> float:
    """A delta well below ``1/rows``: ``1 / (10 * rows)`` (1e-5 for 10,000 rows)."""
    return 1.0 / (10 * max(rows, 1))


@dataclass(frozen=True)
class PrivacySettings:
    """The (epsilon, delta) target per site for a whole experiment, and the clip norm.

    Attributes:
        epsilon: target epsilon for each patient at each site over all ``rounds``, > 0.
        delta: target delta, in (0, 1); must also be below ``1/rows`` at every site
            (``check_rows``). ``None``: each site uses ``default_delta(rows)``.
        clip_norm: per-row gradient norm bound, > 0.
        rounds: the experiment's number of rounds (the noise is spread over all of them).
    """

    epsilon: float = DEFAULT_EPSILON
    delta: float | None = None
    clip_norm: float = DEFAULT_CLIP_NORM
    rounds: int = 1

    def __post_init__(self) -> None:
        epsilon = _number("epsilon", self.epsilon)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if self.delta is not None:
            delta = _number("delta", self.delta)
            if not 0 < delta < 1:
                raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        clip = _number("clip_norm", self.clip_norm)
        if clip <= 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an int >= 1, got {self.rounds!r}")

    def delta_for(self, rows: int) -> float:
        """The delta a site of ``rows`` training rows uses; ValueError if not below 1/rows."""
        delta = default_delta(rows) if self.delta is None else float(self.delta)
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if delta >= 1.0 / rows:
            raise ValueError(
                f"delta must be below 1/rows = {1.0 / rows:.3g} for a site of {rows} rows, "
                f"got {delta}"
            )
        return delta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacySettings:
        if not isinstance(data, Mapping):
            raise ValueError(f"privacy settings must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"epsilon", "delta", "clip_norm", "rounds"}
        if unknown:
            raise ValueError(f"unknown privacy settings keys: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class RoundSpend:
    """One round's privacy spend at one site: one entry of its ledger.

    ``epsilon`` is this round alone at ``delta``; ``epsilon_total`` is the experiment's
    spend at this site after this round (every round so far composed with RDP), the
    figure shown per round. Composition across experiments uses the entries themselves
    (``composed_epsilon``), never a sum of epsilons.
    """

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    clip_norm: float
    epsilon: float
    epsilon_total: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundSpend:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def sample_rate(batch_size: int, rows: int) -> float:
    """Poisson sampling probability of each row per step: ``min(1, batch_size / rows)``."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return min(1.0, batch_size / rows)


def steps_per_round(epochs: int, batch_size: int, rows: int) -> int:
    """Local steps in one round: ``epochs * ceil(rows / batch_size)`` (as without DP)."""
    return epochs * max(1, math.ceil(rows / batch_size))


def epsilon_for(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of the composition of ``(noise_multiplier, sample_rate, steps)`` entries.

    What Opacus's ``RDPAccountant`` reports for that history at ``delta`` (with
    ``ALPHAS``), computed from the same functions: its ``compute_rdp`` is linear in the
    steps, so entries with the same noise and sampling rate are merged and each pair's
    per-step RDP curve is computed once and cached (a ledger of 20 identical rounds costs
    one curve, not 20; equal to the accountant to float rounding). An empty history
    spends 0.
    """
    merged: dict[tuple[float, float], int] = {}
    for s, q, k in history:
        if int(k) > 0:
            key = (float(s), float(q))
            merged[key] = merged.get(key, 0) + int(k)
    if not merged:
        return 0.0
    from opacus.accountants.analysis.rdp import get_privacy_spent  # lazily: see above

    rdp = sum(_rdp_per_step(s, q) * k for (s, q), k in sorted(merged.items()))
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound stays valid, only less tight.
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        eps, _ = get_privacy_spent(orders=list(ALPHAS), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, q: float) -> np.ndarray:
    """The sampled Gaussian's RDP at every order of ``ALPHAS``, for one step (read-only)."""
    from opacus.accountants.analysis.rdp import compute_rdp  # lazily: see above

    curve = np.asarray(
        compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(ALPHAS))
    )
    curve.setflags(write=False)
    return curve


def composed_epsilon(spends: Iterable[RoundSpend], delta: float | None = None) -> float:
    """A dataset's lifetime epsilon: all its rounds composed, at ``delta``.

    ``delta`` defaults to the largest delta among the spends (each was at most that).
    """
    spends = list(spends)
    if not spends:
        return 0.0
    at = max(s.delta for s in spends) if delta is None else delta
    return epsilon_for(((s.noise_multiplier, s.sample_rate, s.steps) for s in spends), at)


def derive_noise(settings: PrivacySettings, *, rows: int, epochs: int, batch_size: int) -> float:
    """The noise multiplier that spends ``settings.epsilon`` over all rounds at this site.

    Uses Opacus's ``get_noise_multiplier`` (RDP) with the site's own sampling rate and
    ``rounds * steps_per_round`` steps; the result's epsilon lies in
    ``[epsilon - 0.01, epsilon]``. Raises ValueError on a delta not below 1/rows.
    """
    delta = settings.delta_for(rows)
    steps = settings.rounds * steps_per_round(epochs, batch_size, rows)
    return _noise_for(float(settings.epsilon), delta, sample_rate(batch_size, rows), steps)


@functools.lru_cache(maxsize=256)
def _noise_for(epsilon: float, delta: float, q: float, steps: int) -> float:
    from opacus.accountants.utils import (
        get_noise_multiplier,  # lazily: see the note on Opacus above
    )

    # A binary search of ~20 accountant calls (about a second): cached, since every round
    # of an experiment at a site asks for the same figure.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=q,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=_EPSILON_TOLERANCE,
                alphas=list(ALPHAS),
            )
        )


def plan_round_spend(
    settings: PrivacySettings, *, round_number: int, rows: int, epochs: int, batch_size: int
) -> RoundSpend:
    """What training round ``round_number`` (1-based) will spend, before any training.

    A site records this in its ledger before it trains (a crash can only over-count).
    """
    if round_number < 1:
        raise ValueError(f"round_number must be >= 1, got {round_number}")
    noise = derive_noise(settings, rows=rows, epochs=epochs, batch_size=batch_size)
    delta = settings.delta_for(rows)
    q = sample_rate(batch_size, rows)
    steps = steps_per_round(epochs, batch_size, rows)
    return RoundSpend(
        round=round_number,
        noise_multiplier=noise,
        sample_rate=q,
        steps=steps,
        delta=delta,
        clip_norm=float(settings.clip_norm),
        epsilon=epsilon_for([(noise, q, steps)], delta),
        epsilon_total=epsilon_for([(noise, q, steps * round_number)], delta),
    )
