"""Alone, global, personalised: each site's figures on its own test rows, side by side.

What a hospital asks of a federation is whether it got a better model for its own
patients than it could train alone. These functions score, on each site's own held-out
rows, the model the site would use under each option: its local-only model (trained
on its rows alone, same budget), the selected global model, its personalised model,
and the pooled (centralized) reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .federation import (
    FederatedConfig,
    FederatedRun,
    SiteSplit,
    evaluate_sites,
    run_centralized,
    run_local,
    summarise,
)
from .model import ModelConfig
from .stats import Normalizer
from .training import evaluate
from .types import Weights

__all__ = ["evaluate_alone", "evaluate_personal", "compare"]


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
