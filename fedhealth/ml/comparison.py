"""Alone, global, personalised: each site's figures on its own test rows, side by side.

What a hospital asks of a federation is whether it got a better model for its own
patients than it could train alone. These functions score, on each site's own held-out
rows, the model the site would use under each option: its local-only model (trained
on its rows alone, same budget), the selected global model, its personalised model,
and the pooled (centralized) reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .federation import (
    FederatedConfig,
    FederatedRun,
    SiteSplit,
    evaluate_sites,
    run_centralized,
    run_local,
    site_slices,
    summarise,
)
from .model import ModelConfig
from .personalize import HEAD_PREFIX, PERSONALIZE_MODES, fit_early_stopping, validation_loss
from .stats import Normalizer
from .training import evaluate
from .types import Metrics, Weights

__all__ = ["SiteComparisonResult", "compare", "compare_at_site", "evaluate_alone", "evaluate_personal", "personalize_at_end"]


def evaluate_personal(
    model: ModelConfig,
    personal: Mapping[str, Weights],
    normalizer: Normalizer,
    sites: Sequence[SiteSplit],
    *,
    positive: int = 1,
) -> dict[str, Any]:
    """Each site's personalised model on its own test rows: ``{"per_site", "mean"}``;
    ``positive``: the schema's positive class, as ``evaluate_sites``."""
    return summarise(
        {
            s.name: evaluate(
                model, personal[s.name], normalizer.transform(s.X_test), s.y_test, positive=positive
            )
            for s in sites
        }
    )


def evaluate_alone(sites: Sequence[SiteSplit], config: FederatedConfig) -> dict[str, Any]:
    """Each site's local-only model (``run_local``) on its own test rows: ``{"per_site", "mean"}``."""
    per_site = {}
    for s in sites:
        weights, normalizer = run_local(s, config)
        per_site[s.name] = evaluate(
            config.model,
            weights,
            normalizer.transform(s.X_test),
            s.y_test,
            positive=config.train.positive,
        )
    return summarise(per_site)


def compare(
    sites: Sequence[SiteSplit], config: FederatedConfig, run: FederatedRun
) -> dict[str, Any]:
    """``{"alone", "federated", "personalized" (when run has them), "centralized"}``,
    each ``{"per_site": {SITE: METRICS}, "mean": METRICS}`` on the sites' own test rows."""
    positive = config.train.positive
    result = {
        "alone": evaluate_alone(sites, config),
        "federated": evaluate_sites(
            config.model, run.weights, run.normalizer, sites, positive=positive
        ),
    }
    if run.personal:
        result["personalized"] = evaluate_personal(
            config.model, run.personal, run.normalizer, sites, positive=positive
        )
    c_weights, c_norm = run_centralized(sites, config)
    result["centralized"] = evaluate_sites(
        config.model, c_weights, c_norm, sites, positive=positive
    )
    return result


@dataclass
class SiteComparisonResult:
    """What ``compare_at_site`` measured at one site.

    ``figures`` is what leaves the site (``record_site_comparison``'s ``figures``):
    ``{"alone", "global", "personalized", "mode"}``, metrics on the site's own test rows
    (NaN where undefined). The models stay at the site: ``local`` with its own
    ``local_normalizer`` (fitted on the site's rows alone), ``personal`` (None without a
    mode) with the experiment's normaliser.
    """

    figures: dict[str, Any]
    local: Weights
    local_normalizer: Normalizer
    personal: Weights | None


def personalize_at_end(
    config: FederatedConfig,
    mode: str,
    global_weights: Weights,
    X_fit: Any,
    y_fit: Any,
    X_val: Any,
    y_val: Any,
) -> Weights:
    """A site's personalised model built, after the federation, from the selected global
    model on its (normalised) fit rows, chosen on its validation slice.

    The platform's rounds share the whole model, so each mode is applied at the end:
    ``finetune`` fine-tunes every layer with early stopping (the global model itself,
    epoch 0, is a candidate); ``fedper`` also trains the output layer alone with the
    shared body frozen (FedPer's site-kept head) and keeps whichever of the two has the
    lower validation loss; ``ditto`` fine-tunes with Ditto's proximal pull
    (``config.ditto_lambda``) toward the global model. Budget: ``rounds x epochs``
    epochs at ``config.finetune_lr``.
    """
    if mode not in PERSONALIZE_MODES:
        raise ValueError(f"personalize must be one of {PERSONALIZE_MODES}, got {mode!r}")
    train = replace(config.train, seed=config.seed, lr=config.finetune_lr)
    budget = config.rounds * config.train.epochs

    def tuned(**options: Any) -> tuple[float, Weights]:
        weights, _ = fit_early_stopping(
            config.model, global_weights, X_fit, y_fit, X_val, y_val, train, max_epochs=budget, **options
        )
        loss = validation_loss(config.model, weights, X_val, y_val)
        return (loss if math.isfinite(loss) else math.inf), weights

    if mode == "ditto":
        return tuned(proximal_mu=config.ditto_lambda)[1]
    full = tuned()
    if mode == "finetune":
        return full[1]
    head = tuned(only=HEAD_PREFIX)
    return head[1] if head[0] < full[0] else full[1]


def compare_at_site(
    split: SiteSplit,
    config: FederatedConfig,
    global_weights: Weights,
    normalizer: Normalizer,
    *,
    mode: str | None,
) -> SiteComparisonResult:
    """Alone / global / personalised at one site, on its own test rows.

    Alone: ``run_local`` (its training rows only, the federation's budget of
    ``rounds x epochs`` epochs, early-stopped on its validation slice when the
    experiment has one). Global: ``global_weights`` (the selected version) under the
    experiment's ``normalizer``. Personalised: ``personalize_at_end`` with ``mode``
    (None: not built). The validation slice is the one the site held out every round
    (``site_slices``, seeded by ``config.seed``). Works with a single-class site (its
    two-class metrics are NaN).
    """
    positive = config.train.positive
    local, local_normalizer = run_local(split, config)

    def score(weights: Weights, norm: Normalizer) -> Metrics:
        return evaluate(config.model, weights, norm.transform(split.X_test), split.y_test, positive=positive)

    personal = None
    if mode is not None:
        X_fit, y_fit, X_val, y_val = site_slices(split, config)
        personal = personalize_at_end(
            config, mode, global_weights, normalizer.transform(X_fit), y_fit, normalizer.transform(X_val), y_val
        )
    figures = {
        "alone": score(local, local_normalizer),
        "global": score(global_weights, normalizer),
        "personalized": None if personal is None else score(personal, normalizer),
        "mode": mode,
    }
    return SiteComparisonResult(figures, local, local_normalizer, personal)
