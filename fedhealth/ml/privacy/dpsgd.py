"""DP-SGD local training: ``train_local`` with Poisson sampling, per-row clipping and noise.

The optimiser is the same Adam as ``train_local`` (same learning-rate schedule, weight
decay and FedProx term), fed with privatised gradients: each sampled row's gradient comes
from ``persample.RowGradients`` (one backward pass; Opacus's ``GradSampleModule`` with
``grad_sampler="hooks"``, its ``functorch`` or ``ew`` modes likewise, measured slower in
bench/bench_dp.py), Opacus's ``DPOptimizer`` clips each to ``clip_norm``,
adds ``N(0, (noise_multiplier * clip_norm)^2)`` to their sum and divides by the expected
batch size. Adam, weight decay and the FedProx pull act on that noisy gradient only, so
they are post-processing and cost no privacy.

Secrecy of the randomness: the row sampling and the noise come from a generator seeded
with ``secret_seed``, which a site draws from the operating system (``secrets``) unless a
test passes one. It must never be the plan's round seed: the server knows that seed and
could otherwise replay the sampling and subtract the noise.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy.typing as npt
import torch
import torch.nn.functional as F

from fedhealth.ml.adam import FusedAdam
from fedhealth.ml.model import ModelConfig, build_model, get_weights, set_weights
from fedhealth.ml.training import (
    TrainConfig,
    TrainResult,
    _evaluate_model,
    _features,
    _labels,
    _learning_rates,
)
from fedhealth.ml.types import Weights

from .accounting import sample_rate, steps_per_round
from .persample import RowGradients, flat_clip_optimizer

if TYPE_CHECKING:  # imported lazily at run time: see fedhealth/ml/privacy/accounting.py
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

__all__ = [
    "GRAD_SAMPLERS",
    "dp_optimizer",
    "poisson_batches",
    "private_gradients",
    "train_local_dp",
]

# How each row's gradient is computed: "rows" (RowGradients, the default), or Opacus's
# GradSampleModule with backward hooks, functorch (torch.func vmap) or expanded weights.
GRAD_SAMPLERS = ("rows", "hooks", "functorch", "ew")


def poisson_batches(n: int, q: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each step: every row joins each batch independently with prob. ``q``.

    This is the sampling the RDP accountant's subsampled Gaussian assumes; batch sizes vary
    and may be 0 (such a step still adds noise). The ``steps x n`` (step, row) slots are one
    sequence of independent Bernoulli(q) trials, drawn as the gaps between successes, which
    are i.i.d. Geometric(q) (the number of trials up to and including the next success):
    the same distribution as one uniform draw per row per step, from about ``q x n`` draws
    per step instead of ``n`` (``tests/ml/test_privacy.py`` checks the rates, sizes and
    independence).
    """
    if q >= 1:
        return [torch.arange(n) for _ in range(steps)]
    if not q > 0:
        raise ValueError(f"sampling rate must be in (0, 1], got {q}")
    total = n * steps
    expected = q * total
    chunk = int(expected + 6 * math.sqrt(expected) + 16)  # almost always enough at once
    drawn: list[torch.Tensor] = []
    last = -1.0  # the slot of the last success so far (float64 counts integers exactly)
    while last < total - 1:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(q, generator=generator)
        slots = gaps.cumsum_(0).add_(last)
        drawn.append(slots)
        last = float(slots[-1])
    slots = torch.cat(drawn) if len(drawn) > 1 else drawn[0]
    slots = slots[slots < total].long()
    per_step = torch.bincount(slots // n, minlength=steps).tolist()
    return list(torch.split(slots % n, per_step))


def dp_optimizer(
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    clip_norm: float,
    expected_batch: float,
    generator: torch.Generator,
    *,
    flat: bool = False,
) -> DPOptimizer:
    """Opacus's ``DPOptimizer`` around ``optimizer``: clip, noise from ``generator``, mean.

    ``flat``: the same clipping done on one flat matrix (``persample.flat_clip_optimizer``).
    """
    from opacus.optimizers import DPOptimizer

    make = flat_clip_optimizer if flat else DPOptimizer
    return make(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm,
        expected_batch_size=expected_batch,  # type: ignore[arg-type]
        loss_reduction="mean",  # divide the noisy sum by the expected batch size
        generator=generator,
    )


def private_gradients(
    private: GradSampleModule | RowGradients,
    optimizer: DPOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """Leave the privatised mean gradient of the rows ``x, y`` in each parameter's ``.grad``.

    ``(sum_i clip(g_i) + N(0, (sigma * C)^2 I)) / expected_batch``, with ``g_i`` each row's
    gradient of its BCE. Returns the summed BCE of the rows, a 0-d tensor (0 for an empty
    batch; no ``.item()``, which would sync every step).
    """
    optimizer.zero_grad(set_to_none=True)
    if len(x):
        loss = F.binary_cross_entropy_with_logits(private(x), y, reduction="sum")
        if isinstance(private, RowGradients):
            private.backward(loss)
            optimizer.pre_step()
            return loss.detach()
        with warnings.catch_warnings():
            # Opacus's full backward hooks on the first layer, whose input needs no
            # gradient: torch warns, the per-row gradients are right all the same.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            loss.backward()
        total = loss.detach()
    else:
        total = torch.zeros(())
        # An empty batch still releases noise: the accountant counted this step.
        for p in optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape))
    optimizer.pre_step()  # clip, add noise, scale: p.grad is now private
    return total


def train_local_dp(
    cfg: ModelConfig,
    global_weights: Weights,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    train: TrainConfig,
    *,
    noise_multiplier: float,
    clip_norm: float,
    secret_seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    evaluate_on: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    grad_sampler: str = "rows",
) -> TrainResult:
    """DP-SGD from ``global_weights`` on one site's normalised rows.

    Args:
        cfg, global_weights, X, y, train, progress, evaluate_on: as ``train_local``.
        noise_multiplier: sigma, >= 0 (0 disables the noise: for tests only).
        clip_norm: per-row gradient L2 bound, > 0.
        secret_seed: seed of the sampling, noise and dropout; ``None`` draws one from the
            OS (production). ``train.seed`` is not used: the server knows it.
        grad_sampler: how rows' gradients are computed (``GRAD_SAMPLERS``); the same
            figures, at different speeds.

    Runs ``epochs * ceil(n / batch_size)`` steps with sampling rate ``batch_size / n``,
    the figures ``accounting.plan_round_spend`` accounts for.

    Raises:
        ValueError: as ``train_local``, or a negative noise / non-positive clip.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    if grad_sampler not in GRAD_SAMPLERS:
        raise ValueError(f"grad_sampler must be one of {GRAD_SAMPLERS}, got {grad_sampler!r}")
    x_all = _features(cfg, X)
    n = x_all.shape[0]
    if n == 0:
        raise ValueError("cannot train on an empty dataset (n == 0)")
    y_all = _labels(y, n)

    seed = secrets.randbits(63) if secret_seed is None else secret_seed
    generator = torch.Generator().manual_seed(seed)
    model = build_model(cfg)
    set_weights(model, global_weights)
    model.generator = generator
    model.train()
    private = _row_gradients(model, grad_sampler)
    params = list(model.parameters())
    mu = train.proximal_mu
    anchors = [p.detach().clone() for p in params] if mu > 0 else []
    # The update is train_local's: torch's fused Adam kernel called directly (FusedAdam, the
    # same update as torch.optim.Adam(fused=True) bit for bit, without its per-step
    # wrapper). Opacus's DPOptimizer wraps a torch optimiser, whose groups give it the
    # parameters: a plain SGD holder that never steps (pre_step only privatises .grad).
    adam = FusedAdam(params, lr=train.lr, weight_decay=train.weight_decay)
    q = sample_rate(train.batch_size, n)
    expected_batch = q * n  # = batch_size, or n on a site smaller than one batch
    optimizer = dp_optimizer(
        torch.optim.SGD(params, lr=0.0), noise_multiplier, clip_norm, expected_batch,
        generator, flat=grad_sampler == "rows",
    )

    per_epoch = steps_per_round(1, train.batch_size, n)
    lrs = _learning_rates(train, per_epoch * train.epochs)
    step = 0
    last_loss, last_rows = torch.zeros(()), 0
    for epoch in range(train.epochs):
        for idx in poisson_batches(n, q, per_epoch, generator):
            adam.lr = lrs[step]
            step += 1
            loss = private_gradients(private, optimizer, x_all[idx], y_all[idx])
            if epoch == train.epochs - 1:
                last_loss += loss
                last_rows += len(idx)
            if mu > 0:
                with torch.no_grad():
                    for p, anchor in zip(params, anchors, strict=True):
                        p.grad.add_(p - anchor, alpha=mu)  # type: ignore[union-attr]
            adam.step()
        if progress is not None:
            progress(epoch + 1, train.epochs)

    optimizer.zero_grad(set_to_none=True)
    if hasattr(private, "remove_hooks"):  # expanded weights register none
        private.remove_hooks()
    model.generator = None
    if evaluate_on is not None:
        x_eval = _features(cfg, evaluate_on[0])
        metrics = _evaluate_model(
            model, x_eval, _labels(evaluate_on[1], x_eval.shape[0]), train.positive
        )
    else:
        metrics = _evaluate_model(model, x_all, y_all, train.positive)
    mean_loss = float(last_loss) / last_rows if last_rows else math.nan
    return TrainResult(weights=get_weights(model), num_samples=n, loss=mean_loss, metrics=metrics)


def _row_gradients(model: torch.nn.Module, grad_sampler: str) -> GradSampleModule | RowGradients:
    if grad_sampler == "rows":
        return RowGradients(model)
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleExpandedWeights

    if grad_sampler == "ew":
        return GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="sum")
    return GradSampleModule(
        model, loss_reduction="sum", force_functorch=grad_sampler == "functorch"
    )
