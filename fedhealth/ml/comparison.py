"""Alone, global, personalised: each site's figures on its own test rows, side by side.

What a hospital asks of a federation is whether it got a better model for its own
patients than it could train alone. These functions score, on each site's own held-out
rows, the model the site would use under each option: its local-only model (trained
on its rows alone, same budget), the selected global model, its personalised model,
and the pooled (centralized) reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

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
from .personalize import (
    HEAD_PREFIX,
    PERSONALIZE_MODES,
    fit_early_stopping,
    improves_beyond_noise,
    row_losses,
)
from .stats import Normalizer
from .training import evaluate
from .types import Metrics, Weights

__all__ = [
    "PersonalChoice",
    "SiteComparisonResult",
    "choose_personal",
    "compare",
    "compare_at_site",
    "evaluate_alone",
    "evaluate_personal",
    "personalize_at_end",
]


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
    mode) with the experiment's normaliser; ``chosen`` what the personalised model is
    (``PersonalChoice.chosen``; "" without a mode), kept in its file's metadata.
    """

    figures: dict[str, Any]
    local: Weights
    local_normalizer: Normalizer
    personal: Weights | None
    chosen: str = ""


@dataclass(frozen=True)
class PersonalChoice:
    """A site's personalised model and what it is: ``chosen`` is ``"global"`` (the
    validation slice did not favour a personalised model),
    ``"head"`` (the output layer retrained, the body shared: FedPer), ``"full"`` (every
    layer fine-tuned) or ``"ditto"`` (fine-tuned with Ditto's proximal pull)."""

    weights: Weights
    chosen: str
    epochs: int = 0


def choose_personal(
    config: FederatedConfig,
    mode: str,
    global_weights: Weights,
    X_fit: Any,
    y_fit: Any,
    X_val: Any,
    y_val: Any,
) -> PersonalChoice:
    """A site's personalised model built, after the federation, from the selected global
    model on its (normalised) fit rows, chosen on its validation slice.

    The platform's rounds share the whole model, so each mode is applied at the end,
    each with early stopping on the validation slice (epoch 0, the global model itself,
    is a candidate) within ``rounds x epochs`` epochs:

    * ``finetune``: every layer at ``config.finetune_lr``;
    * ``ditto``: every layer at ``config.finetune_lr`` with Ditto's proximal pull
      (``config.ditto_lambda``) toward the global model;
    * ``fedper``: the output layer alone, the shared body frozen (FedPer's site-kept
      head), at the training rate ``config.train.lr`` (the head's few weights barely move
      at the fine-tuning rate); the whole-model fine-tune replaces it only when its
      per-row validation losses beat the head model's beyond their noise
      (``improves_beyond_noise``: one-sided paired t-test at 95%). A small site's slice
      (8 rows, one positive) mostly rewards confidence, not a better model:
      docs/quality.md. Without a slice (validation fraction 0) each trains the whole
      budget and the head model is kept (nothing favours the whole model).

    A site whose fit rows or slice hold one class (a referral centre that sees only the
    condition) retrains the head alone, whatever the mode: its slice cannot tell a
    better discriminator from a constant one, so the shared body, where the
    federation's discrimination lives, is never trained on one class; the head moves
    the threshold toward the site's own prevalence (docs/quality.md measures what that
    costs on the other class).
    """
    if mode not in PERSONALIZE_MODES:
        raise ValueError(f"personalize must be one of {PERSONALIZE_MODES}, got {mode!r}")
    budget = config.rounds * config.train.epochs

    def tuned(lr: float, **options: Any) -> tuple[Weights, int]:
        train = replace(config.train, seed=config.seed, lr=lr)
        return fit_early_stopping(
            config.model, global_weights, X_fit, y_fit, X_val, y_val, train, max_epochs=budget, **options
        )

    def labelled(weights: Weights, epoch: int, label: str) -> PersonalChoice:
        return PersonalChoice(weights, label if epoch > 0 else "global", epoch)

    if len(np.unique(np.asarray(y_fit))) < 2 or len(np.unique(np.asarray(y_val))) == 1:
        return labelled(*tuned(config.train.lr, only=HEAD_PREFIX), "head")
    if mode == "ditto":
        return labelled(*tuned(config.finetune_lr, proximal_mu=config.ditto_lambda), "ditto")
    full = labelled(*tuned(config.finetune_lr), "full")
    if mode == "finetune":
        return full
    head = labelled(*tuned(config.train.lr, only=HEAD_PREFIX), "head")
    if full.chosen != "global" and improves_beyond_noise(
        row_losses(config.model, head.weights, X_val, y_val), row_losses(config.model, full.weights, X_val, y_val)
    ):
        return full
    return head


def personalize_at_end(
    config: FederatedConfig,
    mode: str,
    global_weights: Weights,
    X_fit: Any,
    y_fit: Any,
    X_val: Any,
    y_val: Any,
) -> Weights:
    """The weights of ``choose_personal``."""
    return choose_personal(config, mode, global_weights, X_fit, y_fit, X_val, y_val).weights


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
    (None: not built; ``choose_personal``). The validation slice is the one the site held out every round
    (``site_slices``, seeded by ``config.seed``). Works with a single-class site (its
    two-class metrics are NaN).
    """
    positive = config.train.positive
    local, local_normalizer = run_local(split, config)

    def score(weights: Weights, norm: Normalizer) -> Metrics:
        return evaluate(config.model, weights, norm.transform(split.X_test), split.y_test, positive=positive)

    personal, chosen = None, ""
    if mode is not None:
        X_fit, y_fit, X_val, y_val = site_slices(split, config)
        choice = choose_personal(
            config, mode, global_weights, normalizer.transform(X_fit), y_fit, normalizer.transform(X_val), y_val
        )
        personal, chosen = choice.weights, choice.chosen
    figures = {
        "alone": score(local, local_normalizer),
        "global": score(global_weights, normalizer),
        "personalized": None if personal is None else score(personal, normalizer),
        "mode": mode,
    }
    return SiteComparisonResult(figures, local, local_normalizer, personal, chosen)
