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

from .config import FederatedConfig  # here before it moved; still exported
from .metrics import defined_counts, mean_metrics
from .model import ModelConfig, init_weights
from .personalize import (
    fit_early_stopping,
    validation_loss,
    validation_split,
    with_head,
)
from .privacy import (
    dp_fedavg,
    plan_round_spend,
    secure_dp_fedavg,
    train_local_dp,
)
from .secagg import RoundContext
from .secagg.federated import SecureOptions, incompatibility, secure_aggregate
from .split import split_indices
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
    train, test = split_indices(y, test=test_fraction, seed=seed)
    return SiteSplit(name, X[train], y[train], X[test], y[test])


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
    # The global model's mean BCE on the sites' validation slices, weighted by their
    # rows (None without a validation fraction).
    validation_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FederatedRun:
    """What ``run_experiment`` produced.

    ``weights`` is the selected global version: the round with the lowest validation
    loss (``selected_round``), or the last round without validation. ``personal`` holds
    each site's personalised model (empty unless ``config.personalize``).
    """

    weights: Weights
    normalizer: Normalizer
    history: list[RoundRecord]
    selected_round: int
    personal: dict[str, Weights] = field(default_factory=dict)


def best_round(history: Sequence[RoundRecord]) -> int:
    """The round with the lowest validation loss (the earliest on ties), else the last."""
    scored = [(h.validation_loss, h.round) for h in history if h.validation_loss is not None]
    if not scored:
        return history[-1].round if history else 0
    return min(scored)[1]


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
    *,
    positive: int = 1,
) -> dict[str, Any]:
    """``{"per_site": {SITE: METRICS}, "mean": METRICS}`` on every site's test set;
    ``positive``: the schema's positive class (``TrainConfig.positive``)."""
    per_site = {
        s.name: evaluate(model, weights, normalizer.transform(s.X_test), s.y_test, positive=positive)
        for s in sites
    }
    return summarise(per_site)


def run_federated(
    sites: Sequence[SiteSplit],
    config: FederatedConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    secure: SecureOptions | None = None,
) -> tuple[Weights, Normalizer, list[RoundRecord]]:
    """``run_experiment`` as ``(selected weights, normaliser, history)``."""
    run = run_experiment(sites, config, on_round=on_round, secure=secure)
    return run.weights, run.normalizer, run.history


def site_slices(site: SiteSplit, config: FederatedConfig) -> tuple[np.ndarray, ...]:
    """``(X_fit, y_fit, X_val, y_val)`` of a site's training rows (raw), seeded by the
    experiment's seed: the same slice every round and in every door."""
    return validation_split(
        site.X_train, site.y_train, fraction=config.validation_fraction, seed=config.seed
    )


def run_experiment(
    sites: Sequence[SiteSplit],
    config: FederatedConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    secure: SecureOptions | None = None,
) -> FederatedRun:
    """Run up to ``config.rounds`` rounds with every site (fewer with early stopping).

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
    site_dp = config.site_privacy
    site_noise = 0.0
    if site_dp is not None:
        if config.privacy is not None:
            raise ValueError("choose record-level or site-level DP, not both")
        if site_dp.rounds != config.rounds or site_dp.sites != len(sites):
            raise ValueError(
                f"site-level DP settings are for {site_dp.sites} sites and {site_dp.rounds} rounds; "
                f"the run has {len(sites)} and {config.rounds}"
            )
        reason = incompatibility(get_strategy(config.strategy, **config.strategy_params))
        if reason is not None or config.strategy not in ("fedavg", "fedprox"):
            raise ValueError(f"site-level DP is DP-FedAvg: use strategy fedavg or fedprox, not {config.strategy}")
        site_noise = site_dp.noise_multiplier()
        # In one process there is no server to hide the noise from: seeded, reproducible.
        site_rng = np.random.default_rng([config.seed, 0x51DE])
    normalizer = global_normalizer(sites)
    work = []
    for s in sites:
        X_fit, y_fit, X_val, y_val = site_slices(s, config)
        work.append((s, normalizer.transform(X_fit), y_fit, normalizer.transform(X_val), y_val))
    strategy = get_strategy(config.strategy, **config.strategy_params)
    weights = init_weights(config.model, config.seed)
    history: list[RoundRecord] = []
    versions: dict[int, Weights] = {}
    mode = config.personalize
    personal = {s.name: weights for s in sites}  # Ditto's personal models, FedPer's heads
    best_personal: dict[str, tuple[float, Weights]] = {}
    # The site-work contract every door uses (imported here: sitework builds on this module).
    from .sitework import plan_site_round

    for r in range(1, config.rounds + 1):
        updates: list[Update] = []
        spends: dict[str, dict[str, Any]] = {}
        round_start = weights
        for site, X, y, _, _ in work:
            plan = plan_site_round(
                site=site.name, round_number=r, experiment_seed=config.seed, model=config.model,
                train=config.train, strategy=strategy, normalizer=normalizer,
                test_fraction=len(site.y_test) / (len(site.y_test) + len(site.y_train)),
            )
            start = with_head(round_start, personal[site.name]) if mode == "fedper" else round_start
            if config.privacy is None:
                result = train_local(config.model, start, X, y, plan.train)
            else:
                spend = plan_round_spend(
                    config.privacy, round_number=r, rows=len(y),
                    epochs=plan.train.epochs, batch_size=plan.train.batch_size,
                )
                spends[site.name] = spend.to_dict()
                # In one process there is no server to hide the seed from: the round seed
                # keeps simulate reproducible (a real site draws a secret one).
                result = train_local_dp(
                    config.model, start, X, y, plan.train,
                    noise_multiplier=spend.noise_multiplier, clip_norm=spend.clip_norm,
                    secret_seed=plan.train.seed,
                )
            if mode == "fedper":
                personal[site.name] = result.weights  # the head stays here
            elif mode == "ditto":
                ditto = replace(plan.train, proximal_mu=config.ditto_lambda)
                personal[site.name] = train_local(
                    config.model, personal[site.name], X, y, ditto, anchor=round_start
                ).weights
            updates.append(Update(result.weights, result.num_samples, site.name, result.metrics | {"loss": result.loss}))
        if site_dp is not None and secure is not None:
            # Each site adds its noise share before masking (seeded: no server to hide from).
            rngs = {u.site: np.random.default_rng([config.seed, r, i]) for i, u in enumerate(updates)}
            outcome, _ = secure_dp_fedavg(
                weights, updates, clip_norm=site_dp.clip_norm, noise_multiplier=site_noise,
                denominator=site_dp.denominator, options=secure,
                ctx=RoundContext(f"simulate-{config.seed}", r), seed=config.seed, site_rngs=rngs,
            )
            site_spend = site_dp.spend(r, site_noise).to_dict()
            spends = {u.site: site_spend for u in updates}
        elif site_dp is not None:
            outcome = dp_fedavg(
                weights, updates, clip_norm=site_dp.clip_norm, noise_multiplier=site_noise,
                denominator=site_dp.denominator, rng=site_rng,
            )
            site_spend = site_dp.spend(r, site_noise).to_dict()
            spends = {u.site: site_spend for u in updates}
        elif secure is None:
            outcome = strategy.aggregate(weights, updates)
        else:
            ctx = RoundContext(f"simulate-{config.seed}", r)
            outcome, _ = secure_aggregate(strategy, weights, updates, secure, ctx, seed=config.seed)
        if outcome.weights is not None:
            weights = outcome.weights
        versions[r] = weights
        evaluation = evaluate_sites(config.model, weights, normalizer, sites, positive=config.train.positive)["mean"]
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
            validation_loss=_weighted_validation_loss(config, weights, work),
        )
        history.append(record)
        if mode in ("ditto", "fedper"):
            for site, _, _, X_val, y_val in work:
                candidate = with_head(weights, personal[site.name]) if mode == "fedper" else personal[site.name]
                loss = validation_loss(config.model, candidate, X_val, y_val)
                if site.name not in best_personal or loss < best_personal[site.name][0]:
                    best_personal[site.name] = (loss, candidate)
        if on_round is not None:
            on_round(record)
        selected = best_round(history)
        if config.early_stopping is not None and r - selected >= config.early_stopping:
            break
    selected = best_round(history)
    run = FederatedRun(versions[selected], normalizer, history, selected)
    if mode is not None:
        run.personal = {
            site.name: _personal_model(config, mode, run.weights, best_personal.get(site.name), w)
            for site, *w in work
        }
    return run


def _weighted_validation_loss(config: FederatedConfig, weights: Weights, work: list) -> float | None:
    rows = sum(len(w[4]) for w in work)
    if rows == 0:
        return None
    return float(
        sum(validation_loss(config.model, weights, w[3], w[4]) * len(w[4]) for w in work if len(w[4])) / rows
    )


def _personal_model(
    config: FederatedConfig, mode: str, global_weights: Weights,
    best: tuple[float, Weights] | None, arrays: list,
) -> Weights:
    """A site's personalised model, chosen on its validation slice.

    ``finetune``: the selected global model fine-tuned (epoch 0, the global model
    itself, is a candidate). ``ditto``/``fedper``: the mode's best personal model
    (lowest validation loss over the rounds), fine-tuned the same way, or the
    fine-tuned global model when that does better on the slice.
    """
    X, y, X_val, y_val = arrays
    train = replace(config.train, seed=config.seed, lr=config.finetune_lr)

    def tuned(start: Weights) -> tuple[float, Weights]:
        weights, _ = fit_early_stopping(
            config.model, start, X, y, X_val, y_val, train, max_epochs=config.rounds * config.train.epochs
        )
        return validation_loss(config.model, weights, X_val, y_val), weights

    from_global = tuned(global_weights)
    if mode == "finetune" or best is None or not len(y_val):
        return from_global[1]
    from_personal = tuned(best[1])
    return from_personal[1] if from_personal[0] < from_global[0] else from_global[1]


def _pooled_budget(config: FederatedConfig) -> TrainConfig:
    # Same number of passes over each row as the federated run: rounds x local epochs.
    return replace(config.train, epochs=config.rounds * config.train.epochs, seed=config.seed)


def run_centralized(
    sites: Sequence[SiteSplit], config: FederatedConfig
) -> tuple[Weights, Normalizer]:
    """The upper reference: one model trained on all sites' training rows pooled.

    With a validation fraction: on the pooled fit rows, early-stopped on the pooled
    validation slices (the same rows the federation selects on).
    """
    X = np.concatenate([s.X_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    normalizer = Normalizer.from_stats(compute_stats(X))
    if config.validation_fraction > 0:
        parts = [site_slices(s, config) for s in sites]
        X_fit, y_fit, X_val, y_val = (np.concatenate([p[i] for p in parts]) for i in range(4))
        return _early_stopped(config, normalizer, X_fit, y_fit, X_val, y_val), normalizer
    result = train_local(
        config.model, init_weights(config.model, config.seed), normalizer.transform(X), y,
        _pooled_budget(config),
    )
    return result.weights, normalizer


def run_local(site: SiteSplit, config: FederatedConfig) -> tuple[Weights, Normalizer]:
    """The lower reference: a site training alone on its own rows, same budget
    (early-stopped on its validation slice when the experiment has one)."""
    normalizer = Normalizer.from_stats(compute_stats(site.X_train))
    if config.validation_fraction > 0:
        return _early_stopped(config, normalizer, *site_slices(site, config)), normalizer
    result = train_local(
        config.model, init_weights(config.model, config.seed),
        normalizer.transform(site.X_train), site.y_train, _pooled_budget(config),
    )
    return result.weights, normalizer


def _early_stopped(config: FederatedConfig, normalizer: Normalizer, X, y, X_val, y_val) -> Weights:
    weights, _ = fit_early_stopping(
        config.model, init_weights(config.model, config.seed), normalizer.transform(X), y,
        normalizer.transform(X_val), y_val, _pooled_budget(config),
        max_epochs=config.rounds * config.train.epochs,
    )
    return weights


def summarise(results: dict[str, Metrics]) -> dict[str, Any]:
    """``{"per_site": results, "mean": unweighted mean, "defined": sites per metric}``:
    each mean is over the sites where its metric is defined (``defined`` of them)."""
    values = list(results.values())
    return {"per_site": results, "mean": mean_metrics(values), "defined": defined_counts(values)}
