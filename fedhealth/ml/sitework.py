"""The site-work contract: what a site does in a round, written once for every door.

A hosted worker, a remote site agent and ``simulate`` all train and evaluate through
these functions, so a site trains exactly the same way whichever door it uses:

* ``plan_site_round`` builds the ``SitePlan`` for one site and round (model, training
  configuration with the strategy's extras, the round seed, the split, the normaliser).
  The server builds it once and sends it as is (``to_dict``) to an agent;
* ``train_at_site`` trains from the global model on the site's training rows and
  measures the local model on its held-out rows in the same call;
* ``evaluate_at_site`` scores a global model on the held-out rows: metrics and the
  analytics curves from one forward pass. Only these figures leave the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .federation import SiteSplit, round_seed
from .metrics import calibration_points, compute_metrics, confusion, roc_points
from .model import ModelConfig
from .personalize import validation_loss, validation_size, validation_split
from .privacy import PrivacySettings, RoundSpend, plan_round_spend, train_local_dp
from .stats import Normalizer
from .strategies import Strategy
from .training import TrainConfig, TrainResult, predict_proba, train_local
from .types import Metrics, Weights


@dataclass(frozen=True)
class SitePlan:
    """Everything a site needs to train one round as every other site does.

    Attributes:
        round: the round number (1-based).
        site: the site's slug; part of its round seed.
        model: the architecture of the global model.
        train: local training hyper-parameters, with the round seed and the strategy's
            extras (e.g. FedProx's ``proximal_mu``) applied.
        normalizer: the experiment's global mean/std, fixed at the start.
        test_fraction: the share of the site's rows held out for evaluation.
        split_seed: the seed of the held-out split (the experiment's seed: stable across
            rounds, so held-out rows are never trained on).
        privacy: record-level DP requested for the experiment (``None``: off). A request:
            the site derives its own noise from it and its own rows (``privacy_spend``).
        validation_fraction: the share of the site's training rows held out (seeded with
            ``split_seed``) to score each global version's validation loss; 0: none.
    """

    round: int
    site: str
    model: ModelConfig
    train: TrainConfig
    normalizer: Normalizer
    test_fraction: float
    split_seed: int
    privacy: PrivacySettings | None = None
    validation_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        split: dict[str, Any] = {"test_fraction": self.test_fraction, "seed": self.split_seed}
        if self.validation_fraction > 0:  # absent without a slice: plans read by older agents stay valid
            split["validation_fraction"] = self.validation_fraction
        data: dict[str, Any] = {
            "round": self.round,
            "site": self.site,
            "model_config": self.model.to_dict(),
            "train_config": self.train.to_dict(),
            "normalizer": self.normalizer.to_dict(),
            "split": split,
        }
        if self.privacy is not None:  # absent without DP: plans read by older agents stay valid
            data["privacy"] = self.privacy.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SitePlan:
        return cls(
            round=int(data["round"]),
            site=str(data["site"]),
            model=ModelConfig.from_dict(data["model_config"]),
            train=TrainConfig.from_dict(data["train_config"]),
            normalizer=Normalizer.from_dict(data["normalizer"]),
            test_fraction=float(data["split"]["test_fraction"]),
            split_seed=int(data["split"]["seed"]),
            privacy=(
                PrivacySettings.from_dict(data["privacy"]) if data.get("privacy") is not None else None
            ),
            validation_fraction=float(data["split"].get("validation_fraction", 0.0)),
        )


def plan_site_round(
    *,
    site: str,
    round_number: int,
    experiment_seed: int,
    model: ModelConfig,
    train: TrainConfig,
    strategy: Strategy,
    normalizer: Normalizer,
    test_fraction: float,
    privacy: PrivacySettings | None = None,
    validation_fraction: float = 0.0,
) -> SitePlan:
    """The plan for ``site`` in round ``round_number`` (1-based).

    ``train`` is the experiment's training configuration; its seed is replaced by the
    site's round seed and the strategy's ``configure_fit`` extras override it.
    """
    extra = strategy.configure_fit(round_number)
    seed = round_seed(experiment_seed, round_number, site)
    train_cfg = TrainConfig.from_dict(train.to_dict() | {"seed": seed} | extra)
    return SitePlan(
        round=round_number,
        site=site,
        model=model,
        train=train_cfg,
        normalizer=normalizer,
        test_fraction=test_fraction,
        split_seed=experiment_seed,
        privacy=privacy,
        validation_fraction=validation_fraction,
    )


def validation_rows(rows: int, *, test_fraction: float, validation_fraction: float) -> int:
    """The ``validation_n`` a site with ``rows`` rows reports (0 without a slice): its
    validation slice of the training rows ``split_site`` leaves (``ceil(test_fraction *
    rows)`` are held out for testing). The server checks an agent's report against the
    rows it registered, so a site cannot weigh its validation loss more than its rows.
    Raises ValueError when ``rows`` cannot hold a slice."""
    if validation_fraction <= 0:
        return 0
    return validation_size(rows - math.ceil(test_fraction * rows), validation_fraction)


def fit_rows(plan: SitePlan, split: SiteSplit) -> tuple[np.ndarray, np.ndarray]:
    """The training rows a site fits on: its training rows less the validation slice."""
    X, y, _, _ = validation_split(
        split.X_train, split.y_train, fraction=plan.validation_fraction, seed=plan.split_seed
    )
    return X, y


def privacy_spend(plan: SitePlan, split: SiteSplit) -> RoundSpend | None:
    """What training this plan will spend at this site (``None`` without DP), before training.

    Derived from the plan's request and the site's own training rows; a site checks it
    against its budget and records it in its ledger before it trains. Raises ValueError
    on settings this site cannot meet (e.g. a delta not below 1/rows).
    """
    if plan.privacy is None:
        return None
    return plan_round_spend(
        plan.privacy,
        round_number=plan.round,
        rows=len(fit_rows(plan, split)[1]),
        epochs=plan.train.epochs,
        batch_size=plan.train.batch_size,
    )


def train_at_site(
    plan: SitePlan,
    global_weights: Weights,
    split: SiteSplit,
    *,
    spend: RoundSpend | None = None,
    secret_seed: int | None = None,
) -> TrainResult:
    """Train from ``global_weights`` on the split's training rows (raw; normalised here).

    ``TrainResult.metrics`` are the local model's figures on the held-out rows, from the
    same call. With ``plan.privacy`` the training is DP-SGD with ``spend``'s noise
    (``privacy_spend(plan, split)`` when not given; pass the one recorded in the ledger)
    and a sampling/noise seed drawn at the site (``secret_seed`` only in tests).
    Raises ValueError when the rows or weights do not fit the plan.
    """
    X_fit, y_fit = fit_rows(plan, split)
    if plan.privacy is not None:
        spend = spend or privacy_spend(plan, split)
        assert spend is not None
        return train_local_dp(
            plan.model,
            global_weights,
            plan.normalizer.transform(X_fit),
            y_fit,
            plan.train,
            noise_multiplier=spend.noise_multiplier,
            clip_norm=spend.clip_norm,
            secret_seed=secret_seed,
            evaluate_on=(plan.normalizer.transform(split.X_test), split.y_test),
        )
    return train_local(
        plan.model,
        global_weights,
        plan.normalizer.transform(X_fit),
        y_fit,
        plan.train,
        evaluate_on=(plan.normalizer.transform(split.X_test), split.y_test),
    )


def evaluate_at_site(
    model: ModelConfig,
    weights: Weights,
    normalizer: Normalizer,
    split: SiteSplit,
    *,
    validation_fraction: float = 0.0,
    split_seed: int = 0,
    positive: int = 1,
) -> tuple[Metrics, dict[str, Any]]:
    """A global model's metrics and curves on the held-out rows, from one forward pass.

    ``positive``: the label value of the schema's positive class; sensitivity, precision,
    F1, the ROC curve, calibration and confusion counts are that class's.

    With ``validation_fraction`` (the plan's, and its ``split_seed``), ``metrics`` also
    hold ``validation_loss`` (mean BCE on the site's validation slice) and
    ``validation_n`` (its rows): what the server selects the best version by.

    Returns ``(metrics, curves)``: ``metrics`` from ``compute_metrics`` with ``loss`` =
    the mean log loss per row; ``curves`` holds ``roc`` points, ``calibration`` bins and
    the ``confusion`` counts at 0.5: aggregates of predictions, never rows.
    """
    X = normalizer.transform(split.X_test)
    y = np.asarray(split.y_test)
    prob = predict_proba(model, weights, X)
    metrics = compute_metrics(y, prob, positive=positive)
    metrics["loss"] = metrics["log_loss"]
    curves = {
        "roc": roc_points(y, prob, positive=positive),
        "calibration": calibration_points(y, prob, positive=positive),
        "confusion": confusion(y, prob, positive=positive),
    }
    if validation_fraction > 0:
        _, _, X_val, y_val = validation_split(
            split.X_train, split.y_train, fraction=validation_fraction, seed=split_seed
        )
        metrics["validation_loss"] = validation_loss(model, weights, normalizer.transform(X_val), y_val)
        metrics["validation_n"] = float(len(y_val))
    return metrics, curves
