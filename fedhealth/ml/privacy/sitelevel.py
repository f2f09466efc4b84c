"""Site-level differential privacy: DP-FedAvg and its accounting.

McMahan, Ramage, Talwar, Zhang (2018), "Learning Differentially Private Recurrent Language
Models", ICLR. https://arxiv.org/abs/1710.06963

The unit protected is a whole site: the guarantee says that the published models are
almost as likely whether or not one site took part at all, whatever its rows. Each round:

* each site's update is taken as its change from the round's global model,
  ``delta_k = w_k - w_global``, and clipped to L2 norm ``clip_norm`` (S) over all its
  parameters together: ``delta_k * min(1, S / ||delta_k||)``;
* the clipped changes are **summed with weight 1 each** (not by row count: a weight that
  grows with a site's rows would let one site's influence grow without bound), and
  Gaussian noise ``N(0, (z S)^2)`` is added to the sum, once per coordinate;
* the sum is divided by a **fixed denominator** ``m``, the expected number of sites per
  round (``q * N``), never by the number that actually reported: this is McMahan et al.'s
  fixed-denominator estimator ``f~_f`` with every ``w_k = 1``. Adding or removing one site
  changes the sum by at most ``S``, whoever else reported, so the mechanism is the
  Gaussian mechanism with sensitivity ``S`` and noise multiplier ``z`` (the division is
  post-processing). With ``f~_c`` (dividing by the reporters' count) the sensitivity
  would depend on who reported.

Accounting: each round is one step of the subsampled Gaussian mechanism with sampling
rate ``q`` (the share of sites selected per round) and noise multiplier ``z``; ``rounds``
steps compose in RDP with Opacus's accountant (the same ``epsilon_for`` record-level DP
uses). With ``q = 1`` (every site every round, the usual case with a few hospitals) the
bound is the Gaussian mechanism's, exact. With ``q < 1`` it is the Poisson-subsampled
Gaussian's bound, which assumes each site is selected independently and secretly.

With secure aggregation the server sees only the sum, so it cannot clip or add noise:
each site clips its own change and adds its share of the noise, ``N(0, (z S)^2 / t)``
with ``t`` the protocol's threshold (``site_share``). The sum over any ``t`` honest
sites then carries at least ``N(0, (z S)^2)``; with more sites reporting it carries more
(never less) noise than calibrated.

With a handful of hospitals this epsilon is large: ``q`` is near 1 (no amplification by
sampling), and the noise needed to hide a whole hospital's change is divided only by a
handful of sites, so it swamps the model unless epsilon is allowed to grow. Record-level
DP (DP-SGD at each site, ``accounting.py``) is the default for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import AggregateResult, Rejected
from fedhealth.ml.strategies.checks import check_aggregate, screen
from fedhealth.ml.types import Update, Weights

from .accounting import DEFAULT_CLIP_NORM, DEFAULT_EPSILON, _noise_for, _number, epsilon_for

__all__ = [
    "DEFAULT_SITE_DELTA",
    "MIN_SITE_DP_SITES",
    "SiteDPSettings",
    "SiteSpend",
    "apply_mean_change",
    "checked_share_request",
    "clip_change",
    "dp_fedavg",
    "secure_dp_fedavg",
    "secure_coordinate_bound",
    "secure_site_input",
    "site_epsilon",
    "site_share",
]

# The unit is a whole site: a delta of 1/(10 x sites), record-level's rule of thumb, would
# be a failure probability of a few percent with a few hospitals. A fixed small delta,
# which must also be below 1/sites.
DEFAULT_SITE_DELTA = 1e-5
# Fewer sites than this cannot hide one of them: the noise on the mean is z x S / m, and
# with m of one or two it is as large as a whole clipped update times z, so the model
# learns nothing before epsilon is meaningless. Refused rather than run.
MIN_SITE_DP_SITES = 3


@dataclass(frozen=True)
class SiteDPSettings:
    """The (epsilon, delta) target for each site's whole contribution, and DP-FedAvg's knobs.

    Attributes:
        epsilon: target epsilon over all ``rounds``, > 0.
        delta: target delta, in (0, 1/sites).
        clip_norm: L2 bound S on one site's change per round (all parameters together), > 0.
        rounds: rounds the noise is spread over (>= 1).
        sites: sites in the federation, N (>= ``MIN_SITE_DP_SITES``).
        per_round: sites selected per round, m (1..N); ``q = m / N``. It is also the fixed
            denominator of the average.
    """

    epsilon: float = DEFAULT_EPSILON
    delta: float = DEFAULT_SITE_DELTA
    clip_norm: float = DEFAULT_CLIP_NORM
    rounds: int = 1
    sites: int = MIN_SITE_DP_SITES
    per_round: int | None = None

    def __post_init__(self) -> None:
        if _number("epsilon", self.epsilon) <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if _number("clip_norm", self.clip_norm) <= 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        for name in ("rounds", "sites"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.sites < MIN_SITE_DP_SITES:
            raise ValueError(
                f"site-level DP needs at least {MIN_SITE_DP_SITES} sites, got {self.sites}: "
                "with fewer, the noise that hides one site swamps the model"
            )
        m = self.per_round
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.sites):
            raise ValueError(f"per_round must be an int from 1 to sites ({self.sites}), got {m!r}")
        delta = _number("delta", self.delta)
        if not 0 < delta < 1.0 / self.sites:
            raise ValueError(
                f"delta must be above 0 and below 1/sites = {1.0 / self.sites:.3g} "
                f"for {self.sites} sites, got {self.delta}"
            )

    @property
    def denominator(self) -> int:
        """m: the sites expected per round, the fixed denominator of the average."""
        return self.sites if self.per_round is None else self.per_round

    @property
    def sample_rate(self) -> float:
        """q = m / N: the share of sites selected per round."""
        return self.denominator / self.sites

    def noise_multiplier(self) -> float:
        """z that spends ``epsilon`` over ``rounds`` steps at rate ``q`` (Opacus's
        ``get_noise_multiplier``, RDP; the result's epsilon is within 0.01 under the target)."""
        return _noise_for(float(self.epsilon), float(self.delta), self.sample_rate, self.rounds)

    def spend(self, rounds_done: int, noise_multiplier: float | None = None) -> SiteSpend:
        """Each site's guarantee after ``rounds_done`` rounds at ``noise_multiplier``
        (default: the derived one)."""
        z = self.noise_multiplier() if noise_multiplier is None else float(noise_multiplier)
        return SiteSpend(
            rounds=rounds_done, noise_multiplier=z, sample_rate=self.sample_rate,
            delta=float(self.delta), clip_norm=float(self.clip_norm),
            denominator=self.denominator,
            epsilon=site_epsilon(z, self.sample_rate, rounds_done, float(self.delta)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SiteSpend:
    """What DP-FedAvg has spent after ``rounds`` rounds: ``(epsilon, delta)`` for each
    site's whole contribution to every model published so far."""

    rounds: int
    noise_multiplier: float
    sample_rate: float
    delta: float
    clip_norm: float
    denominator: int
    epsilon: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def site_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` steps of the subsampled Gaussian (Opacus's RDP accountant)."""
    return epsilon_for([(noise_multiplier, sample_rate, rounds)], delta)


def clip_change(weights: Weights, reference: Weights, clip_norm: float) -> tuple[dict[str, npt.NDArray[np.float64]], float]:
    """``(clipped change, its norm before clipping)``: ``weights - reference`` in float64,
    scaled by ``min(1, clip_norm / ||change||)``, the L2 norm over every parameter."""
    change = {
        name: np.asarray(weights[name], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        for name, ref in reference.items()
    }
    norm = math.sqrt(sum(float(np.dot(a.reshape(-1), a.reshape(-1))) for a in change.values()))
    if norm > clip_norm:
        scale = clip_norm / norm
        for array in change.values():
            array *= scale
    return change, norm


def _gaussian(reference: Weights, std: float, rng: np.random.Generator) -> dict[str, npt.NDArray[np.float64]]:
    return {name: rng.normal(0.0, std, size=ref.shape) for name, ref in reference.items()}


def dp_fedavg(
    previous: Weights,
    updates: Iterable[Update],
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: int,
    rng: np.random.Generator,
    failures: Sequence[Rejected] = (),
) -> AggregateResult:
    """One round of DP-FedAvg at the server (no secure aggregation).

    ``previous + (sum_k clip(w_k - previous) + N(0, (noise_multiplier * clip_norm)^2 I))
    / denominator``, with every valid update weighted 1 (its ``num_samples`` is ignored).
    ``denominator``: the fixed m (expected sites per round), however many reported.
    ``rng`` must be secret (OS entropy) wherever the result is published: whoever knows
    it can subtract the noise. Updates pass ``screen`` first (shape, finite, plausible);
    an update's rejection depends on that update alone. The result is refused like
    FedAvg's when not finite and plausible.
    """
    if clip_norm <= 0 or noise_multiplier < 0 or denominator < 1:
        raise ValueError(
            f"need clip_norm > 0, noise_multiplier >= 0 and denominator >= 1; got "
            f"{clip_norm}, {noise_multiplier}, {denominator}"
        )
    rejected = list(failures)
    accepted: list[str] = []
    total = 0
    summed = {name: np.zeros(ref.shape, dtype=np.float64) for name, ref in previous.items()}
    for update in screen(updates, previous, rejected):
        change, _ = clip_change(update.weights, previous, clip_norm)
        for name, array in change.items():
            summed[name] += array
        accepted.append(update.site)
        total += update.num_samples
        del update, change
    if not accepted:
        return AggregateResult(weights=None, rejected=rejected)
    noise = _gaussian(previous, noise_multiplier * clip_norm, rng) if noise_multiplier > 0 else {}
    result: dict[str, npt.NDArray[np.float64]] = {}
    for name, ref in previous.items():
        step = summed[name] + noise[name] if noise else summed[name]
        result[name] = np.asarray(ref, dtype=np.float64) + step / denominator
    problem = check_aggregate(result)
    if problem is not None:
        return AggregateResult.refusal(problem, accepted, rejected, total)
    return AggregateResult(
        weights={name: a.astype(np.float32) for name, a in result.items()},
        accepted=accepted, rejected=rejected, num_samples=total,
    )


def site_share(
    weights: Weights,
    reference: Weights,
    *,
    clip_norm: float,
    noise_multiplier: float,
    threshold: int,
    rng: np.random.Generator,
) -> dict[str, npt.NDArray[np.float64]]:
    """A site's own DP-FedAvg step under secure aggregation: its clipped change plus its
    share of the noise, ``N(0, (noise_multiplier * clip_norm)^2 / threshold)``, before
    masking. The sum over any ``threshold`` honest sites carries at least the calibrated
    ``N(0, (z S)^2)``. ``rng``: the site's secret randomness."""
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    change, _ = clip_change(weights, reference, clip_norm)
    if noise_multiplier > 0:
        std = noise_multiplier * clip_norm / math.sqrt(threshold)
        for name, array in _gaussian(reference, std, rng).items():
            change[name] += array
    return change


def secure_site_input(
    weights: Weights,
    reference: Weights,
    *,
    clip_norm: float,
    noise_multiplier: float,
    threshold: int,
    rng: np.random.Generator,
) -> Weights:
    """What a site masks under site-level DP with secure aggregation: ``reference +
    site_share(...)`` in float32, to send with weight 1 (hosted sites and agents alike)."""
    share = site_share(
        weights, reference, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
        threshold=threshold, rng=rng,
    )
    return {k: (np.asarray(reference[k], dtype=np.float64) + share[k]).astype(np.float32) for k in reference}


def checked_share_request(
    request: Mapping[str, Any],
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    threshold: int,
    coordinate_bound: float,
) -> tuple[float, float]:
    """A site's own check of the server's request for its noise share: ``(noise_multiplier,
    clip_norm)`` to call ``secure_site_input`` with, or ValueError saying why not.

    The request (``noise_multiplier`` z and ``clip_norm`` S from the server's task) is a
    request, not an order. The site derives the noise the target it agreed to needs
    (``epsilon`` and ``delta`` over ``rounds``) itself, at ``q = 1``: the site cannot see
    how the server selects sites, so it assumes no amplification by sampling, which needs
    the most noise of any ``q``. It refuses a z below that; a request whose threshold is
    not ``threshold``, the one its own protocol run shares its secrets under (a larger one
    would shrink each share); and a protocol range (``coordinate_bound``, the roster's
    per-coordinate clip) narrower than ``secure_coordinate_bound`` (the encoding would clamp
    the noise away). The privacy of a clipped change plus ``N(0, (z S)^2 / t)`` depends on
    z and t, not on S, so S is taken as asked (> 0)."""
    if not isinstance(request, Mapping):
        raise ValueError(f"the noise request is not a mapping: {request!r}")
    try:
        z = float(request["noise_multiplier"])
        clip = float(request["clip_norm"])
        asked_t = int(request["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the noise request lacks a usable {exc}") from None
    if not (math.isfinite(z) and math.isfinite(clip)) or clip <= 0:
        raise ValueError(f"the noise request's clip_norm {clip} or noise_multiplier {z} is not usable")
    if asked_t != threshold:
        raise ValueError(
            f"the noise request is for threshold {asked_t}, but this site's protocol shares its "
            f"secrets under threshold {threshold}"
        )
    needed = _noise_for(float(epsilon), float(delta), 1.0, int(rounds))
    if z < needed * (1 - 1e-9):
        raise ValueError(
            f"the server asks for noise multiplier {z:.4g}; the target this site agreed to "
            f"(epsilon {float(epsilon):g}, delta {float(delta):g} over {int(rounds)} rounds) "
            f"needs at least {needed:.4g} at sampling rate 1 (this site cannot see the "
            "selection, so it counts on no amplification)"
        )
    bound = secure_coordinate_bound(clip, z, threshold)
    if not coordinate_bound >= bound * (1 - 1e-9):
        raise ValueError(
            f"the protocol's per-coordinate range {coordinate_bound:g} is narrower than "
            f"{bound:g} (the clip plus 8 standard deviations of the noise share): the encoding "
            "would clamp the noise"
        )
    return z, clip


def apply_mean_change(reference: Weights, changes_sum: Mapping[str, npt.NDArray[np.floating[Any]]], denominator: int) -> Weights:
    """``reference + changes_sum / denominator`` in float32: the server's step once the sum
    of the sites' noisy clipped changes is known (under secure aggregation)."""
    return {
        name: (np.asarray(ref, dtype=np.float64) + np.asarray(changes_sum[name], dtype=np.float64) / denominator).astype(np.float32)
        for name, ref in reference.items()
    }


def secure_coordinate_bound(clip_norm: float, noise_multiplier: float, threshold: int) -> float:
    """The per-coordinate range secure aggregation's quantisation must keep for a site's
    noisy clipped change: ``S`` plus 8 standard deviations of its noise share. A value
    outside is clamped by the site's encoding, which would cut the noise's tails; at 8
    standard deviations that happens with probability about 1e-15 per coordinate."""
    return clip_norm + 8.0 * noise_multiplier * clip_norm / math.sqrt(max(threshold, 1))


def secure_dp_fedavg(
    previous: Weights,
    updates: Sequence[Update],
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: int,
    options: Any,
    ctx: Any,
    seed: int,
    site_rngs: Mapping[str, np.random.Generator],
) -> tuple[AggregateResult, list[str]]:
    """One DP-FedAvg round through secure aggregation, all in one process (``simulate``).

    Each site adds its own noise share to its clipped change (``site_share``, with its
    own generator from ``site_rngs``) and sends ``previous + share`` with weight 1 through
    the protocol (``fedhealth.ml.secagg.federated.secure_aggregate``, ``options`` a
    ``SecureOptions`` whose per-coordinate clip is widened to ``secure_coordinate_bound``).
    The server learns only the mean over the survivors, turns it back into their sum and
    divides by the fixed ``denominator``. Returns ``(result, dropped sites)``; below the
    threshold the result keeps the previous model, as without DP.
    """
    from dataclasses import replace

    from fedhealth.ml.secagg.federated import secure_aggregate
    from fedhealth.ml.strategies import FedAvg

    threshold = options.threshold_for(len(updates))
    shares = []
    for u in updates:
        change = site_share(u.weights, previous, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                            threshold=threshold, rng=site_rngs[u.site])
        shares.append(Update(
            {k: (np.asarray(previous[k], dtype=np.float64) + change[k]).astype(np.float32) for k in previous},
            1, u.site, u.metrics,
        ))
    wide = replace(options, clip=max(options.clip, secure_coordinate_bound(clip_norm, noise_multiplier, threshold)))
    outcome, dropped = secure_aggregate(FedAvg(), previous, shares, wide, ctx, seed=seed)
    if outcome.weights is None:
        return outcome, dropped
    survivors = len(outcome.accepted)
    summed = {k: (outcome.weights[k].astype(np.float64) - previous[k]) * survivors for k in previous}
    outcome.weights = apply_mean_change(previous, summed, denominator)
    outcome.num_samples = sum(u.num_samples for u in updates if u.site in set(outcome.accepted))
    return outcome, dropped
