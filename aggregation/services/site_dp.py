"""Site-level differential privacy at aggregation: DP-FedAvg (McMahan et al. 2018).

With secure aggregation (``secure_round`` calls the helpers below) each site clips its
own change and adds its share of the noise, ``N(0, (z S)^2 / t)`` with ``t`` the round's
threshold, before masking: a hosted site in ``noised_input``, an agent on its own machine
after checking the round's ``share_request`` against the target it agreed to; the protocol's range is
widened for it (``secure_spec``); the server turns the survivors' mean back into their
sum over the fixed ``m`` (``secure_result``). The sum carries the calibrated noise when
at least ``t`` sites are honest.

Without secure aggregation the server is trusted with each site's update and adds the
noise itself (``fedhealth.ml.privacy.dp_fedavg``): each site's change from the round's
global model is clipped to ``dp_clip_norm``, weighted 1, summed, noised with
``N(0, (z S)^2)`` from the operating system's randomness (never a seed anyone could
replay), and divided by the fixed ``m`` (the sites selected this round). ``z`` is
derived from the experiment's target over all its rounds with ``q = m / N``, N the
consenting sites.

Each completed round keeps its figures in ``Round.metrics["site_dp"]`` (and so in the
experiment log's ``round_completed`` line): the noise, rate, denominator, clip, delta,
this round's epsilon and the whole experiment's so far (every round's entry composed in
RDP). A version's guarantee is read from them (``aggregation.policy.privacy``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedhealth.ml.privacy import (
    apply_mean_change,
    dp_fedavg,
    epsilon_for,
    secure_coordinate_bound,
    secure_site_input,
)
from fedhealth.ml.strategies import AggregateResult, Rejected
from fedhealth.ml.types import Weights

from ..models import ClientUpdate, ModelVersion, Round
from ..reasons import Reason
from . import artifacts, consent


def _entries_before(round_: Round) -> list[dict[str, Any]]:
    """The site-DP figures of the experiment's earlier completed rounds."""
    done = Round.objects.filter(
        experiment_id=round_.experiment_id, number__lt=round_.number, status=Round.Status.COMPLETED
    ).values_list("metrics", flat=True)
    return [m["site_dp"] for m in done if m and m.get("site_dp")]


def round_figures(round_: Round, *, noise_added_by: str = "server") -> dict[str, Any]:
    """This round's DP-FedAvg settings and spend, before aggregating.

    Raises ValueError (the core's message) when the settings no longer hold, e.g. fewer
    than 3 consenting sites after withdrawals.
    """
    experiment = round_.experiment
    per_round = round_.updates.count()
    sites = max(len([p for p in consent.consenting(experiment) if p.site.is_active]), per_round)
    settings = experiment.site_dp_settings(sites=sites, per_round=per_round)
    assert settings is not None
    z = settings.noise_multiplier()
    q, delta = settings.sample_rate, float(settings.delta)
    history = [(e["noise_multiplier"], e["sample_rate"], 1) for e in _entries_before(round_)]
    return {
        "mechanism": "site-level DP-FedAvg",
        "noise_multiplier": z,
        "sample_rate": q,
        "denominator": settings.denominator,
        "sites": sites,
        "clip_norm": float(settings.clip_norm),
        "delta": delta,
        "target_epsilon": float(settings.epsilon),
        "epsilon_round": epsilon_for([(z, q, 1)], delta),
        "epsilon": epsilon_for([*history, (z, q, 1)], delta),
        "noise_added_by": noise_added_by,
    }


def aggregate_site_dp(round_: Round) -> ModelVersion | None:
    """``aggregate_round`` for a site-level DP experiment without secure aggregation."""
    from .rounds import (
        _aggregation_input,
        _load_strategy,
        _record_rejections,
        _reject,
        fail_aggregation,
        publish_aggregate,
        reason_for,
        screen_stored_updates,
    )

    experiment = round_.experiment
    try:
        figures = round_figures(round_)
    except ValueError as exc:
        fail_aggregation(round_.pk, Reason.QUORUM, f"site-level DP: {exc}.")
        return None
    previous, _ = artifacts.global_weights_for(round_)
    failed = [
        _reject(slug, code or Reason.TRAINING_FAILED)
        for slug, code in round_.updates.filter(status=ClientUpdate.Status.FAILED).values_list(
            "site__slug", "error_code"
        )
    ]
    ids, screened_out = screen_stored_updates(round_, previous, outliers=False)
    late: list[Rejected] = []
    result = dp_fedavg(
        previous, _aggregation_input(round_, ids, late),
        clip_norm=figures["clip_norm"], noise_multiplier=figures["noise_multiplier"],
        denominator=figures["denominator"], rng=np.random.default_rng(),  # OS entropy: secret
        failures=failed,
    )
    rejections = [*result.rejected, *screened_out, *late]
    rejected = [{"site": r.site, "code": reason_for(r.code), "reason": r.reason} for r in rejections]
    if len(result.accepted) < experiment.min_sites:
        _record_rejections(round_, rejected)
        fail_aggregation(
            round_.pk, Reason.QUORUM, f"{len(result.accepted)} usable of the {experiment.min_sites} required."
        )
        return None
    used = list(
        round_.updates.filter(status=ClientUpdate.Status.RECEIVED, site__slug__in=result.accepted)
    )
    return publish_aggregate(
        round_, _load_strategy(experiment), result, rejected, used, extra_metrics={"site_dp": figures}
    )


def secure_spec(round_: Round, threshold: int) -> dict[str, Any]:
    """The secure round's quantisation settings under site-level DP (``{}`` otherwise):
    weight 1 per site, and a per-coordinate range wide enough for a noisy clipped change."""
    if round_.experiment.dp_mode != "site":
        return {}
    figures = round_figures(round_, noise_added_by="sites")
    clip = secure_coordinate_bound(figures["clip_norm"], figures["noise_multiplier"], threshold)
    return {"clip": clip, "max_weight": 1}


def noised_input(round_: Round, threshold: int, extra: dict[str, Any]) -> dict[str, Any]:
    """A hosted site's masked-phase input under site-level DP: its clipped change plus its
    noise share (the operating system's randomness, at the site), as ``reference + share``
    with weight 1. ``extra`` unchanged otherwise."""
    if round_.experiment.dp_mode != "site":
        return extra
    figures = round_figures(round_, noise_added_by="sites")
    noisy = secure_site_input(
        extra["weights"], extra["reference"], clip_norm=figures["clip_norm"],
        noise_multiplier=figures["noise_multiplier"], threshold=threshold,
        rng=np.random.default_rng(),  # OS entropy, at the site
    )
    return {**extra, "weights": noisy, "num_samples": 1}


def share_request(round_: Round, threshold: int) -> dict[str, Any] | None:
    """What an agent is asked to add before masking under site-level DP (None otherwise):
    the noise multiplier z, clip S, threshold t and denominator m of the round, with the
    figures they come from. A request: the agent checks z against the target it agreed to
    (``fedhealth.ml.privacy.checked_share_request``) and refuses less noise."""
    if round_.experiment.dp_mode != "site":
        return None
    figures = round_figures(round_, noise_added_by="sites")
    return {
        "noise_multiplier": figures["noise_multiplier"],
        "clip_norm": figures["clip_norm"],
        "threshold": threshold,
        "denominator": figures["denominator"],
        "sample_rate": figures["sample_rate"],
        "sites": figures["sites"],
        "delta": figures["delta"],
        "target_epsilon": figures["target_epsilon"],
    }


def secure_result(
    round_: Round, mean: Weights, survivors: int, previous: Weights
) -> tuple[AggregateResult, dict[str, Any]]:
    """The next model from a secure round's unmasked mean of ``reference + share`` over
    ``survivors`` sites: ``previous + survivors * (mean - previous) / m``; with the round's
    figures for its metrics."""
    figures = round_figures(round_, noise_added_by="sites")
    summed = {k: (mean[k].astype(np.float64) - previous[k]) * survivors for k in previous}
    weights = apply_mean_change(previous, summed, figures["denominator"])
    return AggregateResult(weights=weights), figures


__all__ = [
    "aggregate_site_dp", "noised_input", "round_figures", "secure_result", "secure_spec", "share_request",
]
