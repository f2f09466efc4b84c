"""An in-process federated experiment: the loop `simulate` runs and the platform mirrors.

The platform (Celery) runs the same steps split across processes: each site calls
``train_local`` on its own rows, the server calls the strategy's ``aggregate``. This
module keeps the two in step by owning the pieces both use: how a site's round seed
is derived, how the global normaliser is built, and how a model is evaluated on every
site's test set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from .metrics import mean_metrics
from .model import ModelConfig, init_weights
from .privacy import PrivacySettings, plan_round_spend, train_local_dp
from .secagg import RoundContext
from .secagg.federated import SecureOptions, incompatibility, secure_aggregate
from .stats import Normalizer, compute_stats, merge_stats
from .strategies import get_strategy
from .training import TrainConfig, evaluate, train_local
from .types import Metrics, Update, Weights


@dataclass(frozen=True)
class SiteSplit:
    """One site's rows, raw (not normalised): train (n, d) / (n,) and test (m, d) / (m,)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def split_site(
    name: str, X: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> SiteSplit:
    """Hold out a stratified, seeded ``test_fraction`` of a site's rows for evaluation."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1, got {test_fraction}")
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return SiteSplit(name, X_tr, y_tr, X_te, y_te)


@dataclass(frozen=True)
class FederatedConfig:
    """Everything that defines an experiment's training, JSON-serialisable via ``to_dict``."""

    rounds: int = 20
    strategy: str = "fedavg"
    strategy_params: dict[str, float] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_features=4))
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    # Record-level DP at each site (DP-SGD); None: off. ``rounds`` must match.
    privacy: PrivacySettings | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "strategy": self.strategy,
            "strategy_params": dict(self.strategy_params),
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "seed": self.seed,
            "privacy": None if self.privacy is None else self.privacy.to_dict(),
        }


@dataclass(frozen=True)
class RoundRecord:
    """What one round produced: test metrics averaged over sites, and who took part."""

    round: int
    loss: float
    accuracy: float
    auroc: float
    train_loss: float
    accepted: list[str]
    rejected: list[dict[str, str]]
    refused: str | None = None  # why no new model this round (the previous one stays)
    # With DP: each site's spend after this round (``RoundSpend.to_dict()``), by site.
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_seed(seed: int, round_number: int, site: str) -> int:
    """A site's training seed for a round: stable across processes and restarts."""
    digest = hashlib.sha256(f"{seed}:{round_number}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def global_normalizer(sites: Sequence[SiteSplit]) -> Normalizer:
    """Global mean/std from each site's sufficient statistics alone (no rows pooled)."""
    return Normalizer.from_stats(merge_stats([compute_stats(s.X_train) for s in sites]))


def evaluate_sites(
    model: ModelConfig,
    weights: Weights,
    normalizer: Normalizer,
    sites: Sequence[SiteSplit],
) -> dict[str, Any]:
    """``{"per_site": {SITE: METRICS}, "mean": METRICS}`` on every site's test set."""
    per_site = {
        s.name: evaluate(model, weights, normalizer.transform(s.X_test), s.y_test) for s in sites
    }
    return {"per_site": per_site, "mean": mean_metrics(list(per_site.values()))}


def run_federated(
    sites: Sequence[SiteSplit],
    config: FederatedConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    secure: SecureOptions | None = None,
) -> tuple[Weights, Normalizer, list[RoundRecord]]:
    """Run ``config.rounds`` rounds with every site; return final weights, normaliser, history.

    ``secure``: aggregate each round with secure aggregation (``fedhealth.ml.secagg``), the
    same protocol the platform runs, with simulated dropouts; a round below the threshold
    keeps the previous global model (``RoundRecord.refused`` says why).
    """
    if not sites:
        raise ValueError("a federated experiment needs at least one site")
    if secure is not None:
        reason = incompatibility(get_strategy(config.strategy, **config.strategy_params))
        if reason is not None:
            raise ValueError(reason)
        secure.threshold_for(len(sites))
    if config.privacy is not None:
        if config.privacy.rounds != config.rounds:
            raise ValueError(f"privacy rounds ({config.privacy.rounds}) must equal rounds ({config.rounds})")
        for site in sites:
            config.privacy.delta_for(len(site.y_train))  # a clear error before any training
    normalizer = global_normalizer(sites)
    train_sets = [(s, normalizer.transform(s.X_train)) for s in sites]
    strategy = get_strategy(config.strategy, **config.strategy_params)
    weights = init_weights(config.model, config.seed)
    history: list[RoundRecord] = []
    # The site-work contract every door uses (imported here: sitework builds on this module).
    from .sitework import plan_site_round

    for r in range(1, config.rounds + 1):
        updates: list[Update] = []
        spends: dict[str, dict[str, Any]] = {}
        for site, X in train_sets:
            plan = plan_site_round(
                site=site.name, round_number=r, experiment_seed=config.seed, model=config.model,
                train=config.train, strategy=strategy, normalizer=normalizer,
                test_fraction=len(site.y_test) / (len(site.y_test) + len(site.y_train)),
            )
            if config.privacy is None:
                result = train_local(config.model, weights, X, site.y_train, plan.train)
            else:
                spend = plan_round_spend(
                    config.privacy, round_number=r, rows=len(site.y_train),
                    epochs=plan.train.epochs, batch_size=plan.train.batch_size,
                )
                spends[site.name] = spend.to_dict()
                # In one process there is no server to hide the seed from: the round seed
                # keeps simulate reproducible (a real site draws a secret one).
                result = train_local_dp(
                    config.model, weights, X, site.y_train, plan.train,
                    noise_multiplier=spend.noise_multiplier, clip_norm=spend.clip_norm,
                    secret_seed=plan.train.seed,
                )
            updates.append(Update(result.weights, result.num_samples, site.name, result.metrics | {"loss": result.loss}))
        if secure is None:
            outcome = strategy.aggregate(weights, updates)
        else:
            ctx = RoundContext(f"simulate-{config.seed}", r)
            outcome, _ = secure_aggregate(strategy, weights, updates, secure, ctx, seed=config.seed)
        if outcome.weights is not None:
            weights = outcome.weights
        evaluation = evaluate_sites(config.model, weights, normalizer, sites)["mean"]
        total = sum(u.num_samples for u in updates)
        record = RoundRecord(
            round=r,
            loss=float(evaluation["loss"]),
            accuracy=float(evaluation["accuracy"]),
            auroc=float(evaluation["auroc"]),
            train_loss=float(sum(u.metrics["loss"] * u.num_samples for u in updates) / total),
            accepted=list(outcome.accepted),
            rejected=[{"site": x.site, "reason": x.reason} for x in outcome.rejected],
            refused=outcome.refused,
            privacy=spends,
        )
        history.append(record)
        if on_round is not None:
            on_round(record)
    return weights, normalizer, history


def _pooled_budget(config: FederatedConfig) -> TrainConfig:
    # Same number of passes over each row as the federated run: rounds x local epochs.
    return replace(config.train, epochs=config.rounds * config.train.epochs, seed=config.seed)


def run_centralized(
    sites: Sequence[SiteSplit], config: FederatedConfig
) -> tuple[Weights, Normalizer]:
    """The upper reference: one model trained on all sites' training rows pooled."""
    X = np.concatenate([s.X_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    normalizer = Normalizer.from_stats(compute_stats(X))
    result = train_local(
        config.model, init_weights(config.model, config.seed), normalizer.transform(X), y,
        _pooled_budget(config),
    )
    return result.weights, normalizer


def run_local(site: SiteSplit, config: FederatedConfig) -> tuple[Weights, Normalizer]:
    """The lower reference: a site training alone on its own rows, same budget."""
    normalizer = Normalizer.from_stats(compute_stats(site.X_train))
    result = train_local(
        config.model, init_weights(config.model, config.seed),
        normalizer.transform(site.X_train), site.y_train, _pooled_budget(config),
    )
    return result.weights, normalizer


def summarise(results: dict[str, Metrics]) -> dict[str, Any]:
    """``{"per_site": results, "mean": unweighted mean}``."""
    return {"per_site": results, "mean": mean_metrics(list(results.values()))}
