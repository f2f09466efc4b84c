"""Validation slices, early stopping and per-site personalisation.

A site holds out a seeded *validation slice* of its training rows: the federation
selects the global version with the lowest validation loss (weighted by the sites'
validation rows), may stop early, and each site picks its personalised model on it.

Personalisation modes (``PERSONALIZE_MODES``), each producing one model per site that
stays at the site:

* ``finetune``: continue training the selected global model on the site's rows, one
  epoch at a time, keeping the epoch with the lowest validation loss (epoch 0, the
  global model itself, is a candidate, so fine-tuning never makes the site's
  validation loss worse).
* ``ditto`` (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through
  Personalization"): besides the global model's local update, each site trains its own
  model every round on the same rows with a proximal pull ``lambda/2 ||v - w||^2``
  toward the round's global weights; only the global update is sent. As FL4Health's
  ``DittoClient``, both are trained for the same steps, and the personal model starts
  from the initial global weights.
* ``fedper`` (Arivazhagan et al. 2019, "Federated Learning with Personalization
  Layers"): the output layer (``out.*``, the head) stays at the site; only the body
  is shared (FL4Health's ``FixedLayerExchanger`` over the body's layers).

Every mode ends at the site the same way, on its validation slice: the mode's best
personal model (over the rounds) and the selected global model are each fine-tuned
with early stopping, and the one with the lower validation loss is the site's model.
docs/quality.md measures the modes against each other on three cases; FedPer had the
best mean accuracy over them and is the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from .config import DEFAULT_PERSONALIZE, PERSONALIZE_MODES  # here before they moved; still exported
from .model import ModelConfig, build_model, get_weights, set_weights
from .split import split_indices
from .training import TrainConfig, evaluate
from .types import Weights

__all__ = [
    "DEFAULT_PERSONALIZE",
    "HEAD_PREFIX",
    "PERSONALIZE_MODES",
    "fit_early_stopping",
    "improves_beyond_noise",
    "row_losses",
    "t_quantile",
    "validation_loss",
    "validation_size",
    "validation_split",
    "with_head",
]

#: FedPer's site-kept layer: the output layer of ``HealthNet``.
HEAD_PREFIX = "out."


def validation_split(
    X: npt.ArrayLike, y: npt.ArrayLike, *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_fit, y_fit, X_val, y_val)``: a seeded ``fraction`` of the rows held out.

    Stratified when each class present has at least two rows (a single-class site is
    split at random: its slice has that one class). ``fraction == 0`` gives an empty
    slice; at least one row is always left to fit and, when ``fraction > 0``, at least
    one held out. Raises ValueError for a fraction outside [0, 1) or too few rows.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(y)
    if fraction == 0.0:
        return X, y, X[:0], y[:0]
    n_val = validation_size(n, fraction)
    counts = np.bincount(y.astype(np.int64), minlength=2)
    present = counts[counts > 0]
    stratify = y if (present >= 2).all() and len(present) <= n_val <= n - len(present) else None
    fit, val = split_indices(y, test=n_val, seed=seed, stratify=stratify is not None)
    return X[fit], y[fit], X[val], y[val]


def validation_size(n: int, fraction: float) -> int:
    """How many of ``n`` training rows ``validation_split`` holds out (0 when ``fraction``
    is 0). The server checks a site's reported ``validation_n`` against it. Raises
    ValueError when a slice is asked of fewer than 2 rows."""
    if fraction == 0.0:
        return 0
    if n < 2:
        raise ValueError(f"a validation slice needs at least 2 training rows, got {n}")
    return min(max(1, round(fraction * n)), n - 1)


def validation_loss(
    cfg: ModelConfig, weights: Weights, X_val: npt.ArrayLike, y_val: npt.ArrayLike
) -> float:
    """Mean BCE per row on a (normalised) validation slice; NaN when it is empty."""
    if len(np.asarray(y_val)) == 0:
        return math.nan
    return float(evaluate(cfg, weights, X_val, y_val)["loss"])


def row_losses(
    cfg: ModelConfig, weights: Weights, X_val: npt.ArrayLike, y_val: npt.ArrayLike
) -> np.ndarray:
    """BCE of each row of a (normalised) validation slice (float64; empty for an empty slice)."""
    y = np.asarray(y_val, dtype=np.float32)
    if len(y) == 0:
        return np.zeros(0)
    model = build_model(cfg)
    set_weights(model, weights)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(X_val, dtype=np.float32)))
        losses = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="none")
    return losses.numpy().astype(np.float64)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, the Cornish-Fisher
    expansion (Abramowitz & Stegun 26.7.5) above (within 0.002 of the exact value at 3
    degrees of freedom for p = 0.95). No scipy in the core."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got {p}, {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


#: The one-sided level at which a more flexible personalised model must beat the one it
#: would replace on the validation slice (``improves_beyond_noise``).
SWITCH_LEVEL = 0.95


def improves_beyond_noise(
    current: npt.ArrayLike, candidate: npt.ArrayLike, *, level: float = SWITCH_LEVEL
) -> bool:
    """Whether ``candidate``'s per-row validation losses beat ``current``'s (the same
    rows) by more than their noise: a one-sided paired t-test at ``level`` on the
    per-row differences, ``mean(d) > t(level, n-1) * sd(d) / sqrt(n)``.

    On a small slice whose rows the current model already classifies, a lower loss is
    mostly more confidence, and a gain carried by one row gives ``mean/SE`` of about 1:
    not evidence. Fewer than two rows, or a non-finite loss: False (keep the current).
    """
    d = np.asarray(current, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    n = len(d)
    if n < 2 or not np.isfinite(d).all():
        return False
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    return mean > t_quantile(level, n - 1) * se if se > 0 else mean > 0


def with_head(body: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> Weights:
    """``body``'s weights with the output layer (``HEAD_PREFIX``) taken from ``head``."""
    return {
        name: np.array(head[name] if name.startswith(HEAD_PREFIX) else value, dtype=np.float32)
        for name, value in body.items()
    }


def fit_early_stopping(
    cfg: ModelConfig,
    start: Weights,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    X_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    train: TrainConfig,
    *,
    max_epochs: int,
    patience: int = 5,
    only: str | None = None,
    proximal_mu: float = 0.0,
) -> tuple[Weights, int]:
    """Train from ``start`` epoch by epoch; return the best weights and their epoch.

    One Adam optimiser at ``train.lr`` (constant) runs across epochs; after each epoch
    the validation loss is measured and the best weights kept, ``start`` (epoch 0)
    included. Stops after ``patience`` epochs without improvement or ``max_epochs``.
    With an empty validation slice it trains ``max_epochs`` and returns the last
    weights. Inputs are normalised; deterministic for ``train.seed``.

    ``only``: train only the parameters whose name starts with it (FedPer's head,
    ``HEAD_PREFIX``), the rest frozen. ``proximal_mu`` > 0 adds Ditto's pull
    ``mu/2 ||v - start||^2`` toward ``start``.
    """
    x = torch.from_numpy(np.array(X, dtype=np.float32))
    t = torch.from_numpy(np.asarray(y, dtype=np.float32))
    n = len(t)
    if n == 0:
        raise ValueError("cannot train on an empty dataset (n == 0)")
    has_val = len(np.asarray(y_val)) > 0
    best = {k: v.copy() for k, v in start.items()}
    best_loss = validation_loss(cfg, start, X_val, y_val) if has_val else math.inf
    best_epoch = 0
    model = build_model(cfg)
    set_weights(model, start)
    generator = torch.Generator().manual_seed(train.seed)
    model.generator = generator
    named = [(name, p) for name, p in model.named_parameters() if only is None or name.startswith(only)]
    if not named:
        raise ValueError(f"no parameter starts with {only!r}")
    for name, p in model.named_parameters():
        p.requires_grad_(only is None or name.startswith(only))
    params = [p for _, p in named]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    batch = min(train.batch_size, n)
    for epoch in range(1, max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=generator)
        for start_row in range(0, n, batch):
            idx = perm[start_row : start_row + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(x[idx]), t[idx])
            if anchors:
                loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            loss.backward()
            optimizer.step()
        current = get_weights(model)
        if not has_val:
            best, best_epoch = current, epoch
            continue
        val = validation_loss(cfg, current, X_val, y_val)
        if val < best_loss - 1e-6:
            best, best_loss, best_epoch = current, val, epoch
        elif epoch - best_epoch >= patience:
            break
    model.generator = None
    return best, best_epoch
