"""Local training and evaluation of ``HealthNet`` on one site's (normalised) data.

``train_local`` is the client half of FedAvg/FedProx (McMahan et al. 2017, "Communication-
Efficient Learning of Deep Networks from Decentralized Data"; Li et al. 2020, "Federated
Optimization in Heterogeneous Networks"): start from the global weights, run a few epochs
of mini-batch Adam with a fresh optimiser, return the new weights and the row count.

Determinism: every random draw (shuffling, dropout) comes from one local
``torch.Generator`` seeded with ``TrainConfig.seed``, so the same inputs and seed give
bit-identical weights, and torch's global RNG is neither read nor advanced. The CPU kernels
used are deterministic; results are reproducible for the same torch build and thread
count (callers own ``torch.set_num_threads``; this module never changes global settings).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from fedhealth.ml.adam import FusedAdam
from fedhealth.ml.config import LR_SCHEDULES, TrainConfig  # here before they moved; still exported
from fedhealth.ml.metrics import compute_metrics
from fedhealth.ml.model import HealthNet, ModelConfig, build_model, get_weights, set_weights
from fedhealth.ml.types import Metrics, Weights

__all__ = ["LR_SCHEDULES", "TrainConfig", "TrainResult", "evaluate", "predict_proba", "train_local"]

_COSINE_FLOOR = 0.1  # cosine ends at 10% of lr rather than 0, so no local step is wasted
_PREDICT_BATCH = 8192  # rows per forward pass in predict_proba/evaluate


@dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train_local``.

    Attributes:
        weights: Trained weights, float32, ``state_dict`` order.
        num_samples: Training rows (the FedAvg aggregation weight).
        loss: Mean BCE per row over the last epoch, as seen during training (dropout on,
            excluding the FedProx and weight-decay penalties).
        metrics: ``evaluate`` on the training data with the trained weights (incl. "loss").
    """

    weights: Weights
    num_samples: int
    loss: float
    metrics: Metrics


def _features(cfg: ModelConfig, X: npt.ArrayLike) -> torch.Tensor:
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != cfg.n_features:
        raise ValueError(f"X must have shape (n, {cfg.n_features}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("X contains NaN or infinite values (impute before training)")
    if not (x.flags.writeable and x.flags.c_contiguous):
        x = np.array(x, order="C")  # a writable copy: torch.from_numpy warns on read-only
    return torch.from_numpy(x)


def _labels(y: npt.ArrayLike, n: int) -> torch.Tensor:
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y must contain only 0 and 1")
    return torch.from_numpy(labels.astype(np.float32))


def _learning_rates(train: TrainConfig, total_steps: int) -> list[float]:
    """Learning rate of each local step (precomputed: no scheduler object in the loop)."""
    if train.lr_schedule == "constant":
        return [train.lr] * total_steps
    if train.lr_schedule == "step":
        return [train.lr * 0.5 ** (3 * s // total_steps) for s in range(total_steps)]
    return [
        train.lr
        * (_COSINE_FLOOR + (1 - _COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * s / total_steps)))
        for s in range(total_steps)
    ]


def _logits(model: HealthNet, x: torch.Tensor) -> torch.Tensor:
    """(n,) logits in eval mode, without autograd, in batches of ``_PREDICT_BATCH`` rows."""
    model.eval()
    with torch.inference_mode():
        if x.shape[0] <= _PREDICT_BATCH:
            return model(x)
        return torch.cat([model(chunk) for chunk in x.split(_PREDICT_BATCH)])


def _evaluate_model(model: HealthNet, x: torch.Tensor, y: torch.Tensor, positive: int = 1) -> Metrics:
    logits = _logits(model, x)
    prob = torch.sigmoid(logits).numpy()
    metrics = compute_metrics(y.numpy(), prob, positive=positive)
    with torch.inference_mode():
        bce = F.binary_cross_entropy_with_logits(logits, y) if len(y) else torch.tensor(math.nan)
    metrics["loss"] = float(bce)
    return metrics


def train_local(
    cfg: ModelConfig,
    global_weights: Weights,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    train: TrainConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    evaluate_on: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    anchor: Weights | None = None,
) -> TrainResult:
    """Train from ``global_weights`` on one site's data and return the new weights.

    Args:
        cfg: Architecture matching ``global_weights``.
        global_weights: Starting point (the current global model); not modified.
        X: (n, n_features) features, already normalised with the experiment's statistics.
        y: (n,) labels in {0, 1}.
        train: Hyper-parameters; ``train.seed`` fixes shuffling and dropout.
        progress: Called as ``progress(epochs_done, epochs_total)`` after each epoch.
        evaluate_on: ``(X_test, y_test)``, normalised like X: ``TrainResult.metrics`` are
            then measured there instead of on the training rows (saves a second pass
            when the caller wants the local model's test figures anyway).
        anchor: The point ``proximal_mu``'s penalty pulls toward (default: the starting
            ``global_weights``, FedProx). Ditto starts from the site's personal model and
            pulls toward the round's global model.

    Each epoch shuffles the rows with one ``randperm`` and slices contiguous mini-batches
    of ``batch_size`` (the last one may be smaller; ``n < batch_size`` gives a single
    batch). A fresh Adam optimiser minimises ``BCEWithLogitsLoss``.

    Raises:
        ValueError: n == 0, bad shapes/labels, non-finite X, or weights not matching ``cfg``.
    """
    x_all = _features(cfg, X)
    n = x_all.shape[0]
    if n == 0:
        raise ValueError("cannot train on an empty dataset (n == 0)")
    y_all = _labels(y, n)

    model = build_model(cfg)
    set_weights(model, global_weights)
    generator = torch.Generator().manual_seed(train.seed)
    model.generator = generator
    model.train()
    params = list(model.parameters())
    mu = train.proximal_mu
    if mu > 0 and anchor is not None:
        anchors = [
            torch.from_numpy(np.array(anchor[name], dtype=np.float32))
            for name, _ in model.named_parameters()
        ]
    else:
        anchors = [p.detach().clone() for p in params] if mu > 0 else []
    # torch's fused single-kernel CPU Adam (~3.5x cheaper per step than the default
    # per-parameter loop for a model this small), called without torch.optim: same
    # update bit for bit, no torch._dynamo import, no per-step wrapper (fedhealth/ml/adam.py).
    optimizer = FusedAdam(params, lr=train.lr, weight_decay=train.weight_decay)

    batch = min(train.batch_size, n)
    starts = range(0, n, batch)
    lrs = _learning_rates(train, len(starts) * train.epochs)
    last_losses: list[torch.Tensor] = []
    step = 0
    for epoch in range(train.epochs):
        # One gather per epoch; the mini-batches below are then zero-copy views.
        perm = torch.randperm(n, generator=generator)
        x_epoch, y_epoch = x_all[perm], y_all[perm]
        last_epoch = epoch == train.epochs - 1
        for start in starts:
            optimizer.lr = lrs[step]
            step += 1
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(
                model(x_epoch[start : start + batch]), y_epoch[start : start + batch]
            )
            loss.backward()
            if mu > 0:
                # FedProx: add the gradient of mu/2 * ||w - w_global||^2, i.e. mu * (w - w_global),
                # directly instead of building the penalty into the graph (same update, fewer ops).
                with torch.no_grad():
                    for p, a in zip(params, anchors, strict=True):
                        p.grad.add_(p - a, alpha=mu)  # type: ignore[union-attr]
            optimizer.step()
            if last_epoch:
                last_losses.append(loss.detach())  # no .item(): avoid a per-step sync
        if progress is not None:
            progress(epoch + 1, train.epochs)

    sizes = torch.tensor([min(batch, n - s) for s in starts], dtype=torch.float32)
    mean_loss = float((torch.stack(last_losses) * sizes).sum() / n)
    model.generator = None
    if evaluate_on is not None:
        x_eval = _features(cfg, evaluate_on[0])
        metrics = _evaluate_model(model, x_eval, _labels(evaluate_on[1], x_eval.shape[0]), train.positive)
    else:
        metrics = _evaluate_model(model, x_all, y_all, train.positive)
    return TrainResult(weights=get_weights(model), num_samples=n, loss=mean_loss, metrics=metrics)


def predict_proba(cfg: ModelConfig, weights: Weights, X_normalised: npt.ArrayLike) -> np.ndarray:
    """Probabilities of class 1, shape (n,) float32 in [0, 1] (eval mode, no autograd)."""
    model = build_model(cfg)
    set_weights(model, weights)
    return torch.sigmoid(_logits(model, _features(cfg, X_normalised))).numpy()


def evaluate(
    cfg: ModelConfig,
    weights: Weights,
    X_normalised: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    positive: int = 1,
) -> Metrics:
    """``compute_metrics`` of ``predict_proba`` against ``y``, plus "loss" (mean BCE per row).
    ``positive``: the label value of the schema's positive class.

    "loss" is computed from the logits (exact), "log_loss" from clipped probabilities;
    they agree except for extreme predictions. With n == 0 every value is NaN and n is 0.
    """
    model = build_model(cfg)
    set_weights(model, weights)
    x = _features(cfg, X_normalised)
    return _evaluate_model(model, x, _labels(y, x.shape[0]), positive)
