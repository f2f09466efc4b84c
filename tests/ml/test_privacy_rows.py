"""RowGradients gives each row's gradient exactly as Opacus's GradSampleModule does, and
the flat-clipping optimizer privatises it exactly as Opacus's DPOptimizer does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from fedhealth.ml.model import ModelConfig, build_model, init_weights, set_weights
from fedhealth.ml.privacy import dp_optimizer, private_gradients
from fedhealth.ml.privacy.dpsgd import GRAD_SAMPLERS, train_local_dp
from fedhealth.ml.privacy.persample import RowGradients
from fedhealth.ml.training import TrainConfig


def _batch(n: int = 48, features: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (torch.rand(n, generator=g) < 0.4).float()
    return x, y


def _model(cfg: ModelConfig):
    model = build_model(cfg)
    set_weights(model, init_weights(cfg, seed=2))
    return model


# Opacus's hooks on the first layer, whose input needs no gradient: torch warns, the
# per-row gradients are right all the same (as in dpsgd.private_gradients).
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("hidden", [(), (16,), (32, 16, 8)])
def test_row_gradients_equal_opacus_grad_samples(hidden) -> None:
    # Prepare: the same model twice, the same rows.
    cfg = ModelConfig(n_features=5, hidden=hidden)
    x, y = _batch()
    ours, theirs = _model(cfg), _model(cfg)

    # Execute: our one-backward per-row gradients, and Opacus's hooks.
    rows = RowGradients(ours)
    rows.backward(F.binary_cross_entropy_with_logits(rows(x), y, reduction="sum"))
    opacus = GradSampleModule(theirs, loss_reduction="sum")
    F.binary_cross_entropy_with_logits(opacus(x), y, reduction="sum").backward()

    # Assert: every parameter's (rows, *shape) tensor agrees; .grad is left alone.
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert p.grad_sample.shape == (48, *p.shape), name
        np.testing.assert_allclose(
            p.grad_sample.numpy(), q.grad_sample.numpy(), rtol=1e-5, atol=1e-7
        )
        assert p.grad is None
    rows.remove_hooks()
    opacus.remove_hooks()


def test_flat_clipping_privatises_as_opacus_does() -> None:
    # Prepare: clip 0.05 (every row clipped) and the same noise generator seed.
    cfg = ModelConfig(n_features=5, hidden=(16, 8))
    x, y = _batch(n=40)
    grads = {}
    for flat in (True, False):
        model = _model(cfg)
        rows = RowGradients(model)
        optimizer = dp_optimizer(
            torch.optim.SGD(model.parameters(), lr=1.0),
            1.5,
            0.05,
            32,
            torch.Generator().manual_seed(9),
            flat=flat,
        )
        private_gradients(rows, optimizer, x, y)
        grads[flat] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_every_sampler_trains_the_same_model() -> None:
    # The same secret seed: the same batches and noise, so the same weights whichever
    # way rows' gradients were computed (up to float summation order).
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(300) > 0).astype(np.int64)
    cfg = ModelConfig(n_features=5, hidden=(16, 8))
    start = init_weights(cfg, seed=0)
    train = TrainConfig(epochs=2, batch_size=30, lr=1e-2)
    results = {
        m: train_local_dp(
            cfg,
            start,
            X,
            y,
            train,
            noise_multiplier=1.0,
            clip_norm=0.5,
            secret_seed=3,
            grad_sampler=m,
        )
        for m in GRAD_SAMPLERS
    }
    for m in GRAD_SAMPLERS[1:]:
        for key in start:
            np.testing.assert_allclose(
                results[m].weights[key], results["rows"].weights[key], rtol=0, atol=1e-4
            )
    with pytest.raises(ValueError, match="grad_sampler must be one of"):
        train_local_dp(
            cfg, start, X, y, train, noise_multiplier=1.0, clip_norm=0.5, grad_sampler="vmap"
        )


def test_row_gradients_refuse_a_model_with_other_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    with pytest.raises(ValueError, match="linear layers only"):
        RowGradients(model)


def test_poisson_batches_sample_every_row_independently_at_rate_q() -> None:
    from fedhealth.ml.privacy import poisson_batches

    # Prepare: 200 rows at q = 0.05 over 4,000 steps (drawn as two "epochs" of 2,000).
    n, q, steps = 200, 0.05, 2000
    g = torch.Generator().manual_seed(5)
    batches = poisson_batches(n, q, steps, g) + poisson_batches(n, q, steps, g)
    member = torch.zeros(2 * steps, n)
    for s, idx in enumerate(batches):
        assert idx.dtype == torch.int64 and torch.equal(idx, torch.unique(idx))  # sorted, no repeats
        assert idx.numel() == 0 or (int(idx.min()) >= 0 and int(idx.max()) < n)
        member[s, idx] = 1
    total = member.numel()

    # Assert: every (step, row) is a Bernoulli(q): the overall rate, each row's rate, the
    # batch sizes' mean and variance (Binomial(n, q)), and no dependence between adjacent
    # rows, the last and first rows of consecutive steps, or the same row in consecutive steps.
    assert float(member.mean()) == pytest.approx(q, abs=4 * (q * (1 - q) / total) ** 0.5)
    per_row = member.mean(0)
    assert float(per_row.min()) > q - 5 * (q * (1 - q) / (2 * steps)) ** 0.5
    assert float(per_row.max()) < q + 5 * (q * (1 - q) / (2 * steps)) ** 0.5
    sizes = member.sum(1)
    assert float(sizes.mean()) == pytest.approx(n * q, rel=0.02)
    assert float(sizes.var()) == pytest.approx(n * q * (1 - q), rel=0.1)
    stream = member.reshape(-1)  # the steps x n slots in the order they are drawn
    for a, b in [
        (stream[:-1], stream[1:]),
        (member[:-1, -1], member[1:, 0]),
        (member[:-1].reshape(-1), member[1:].reshape(-1)),
    ]:
        r = float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
        assert abs(r) < 5 / len(a) ** 0.5, r
    # q = 1 (a site smaller than one batch): every row, every step.
    assert all(torch.equal(b, torch.arange(7)) for b in poisson_batches(7, 1.0, 3, g))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_the_products_optimizer_clips_and_noises_as_opacus_over_steps(sigma) -> None:
    """train_local_dp's privatisation (RowGradients, the flat optimizer, its flat noise)
    against Opacus's own GradSampleModule and DPOptimizer, step by step from the same
    generator state, empty batch included: the same clipped sum, the same noise."""
    cfg = ModelConfig(n_features=5, hidden=(64, 32))  # 2,497 parameters: the noise's std to ~1.4%
    x, y = _batch(n=60)
    got, want = [], []
    for ours in (True, False):
        model = _model(cfg)
        private = RowGradients(model) if ours else GradSampleModule(model, loss_reduction="sum")
        optimizer = dp_optimizer(
            torch.optim.SGD(model.parameters(), lr=0.0),
            sigma,
            0.05,
            24,
            torch.Generator().manual_seed(21),
            flat=ours,
        )
        for rows in (slice(0, 30), slice(0, 0), slice(30, 60)):
            private_gradients(private, optimizer, x[rows], y[rows])
            (got if ours else want).append([p.grad.clone() for p in model.parameters()])
        private.remove_hooks()
    for ours, theirs in zip(got, want, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    if sigma:  # the empty step is the noise alone: N(0, (sigma C / expected batch)^2)
        noise = torch.cat([g.reshape(-1) for g in got[1]])
        assert float(noise.std()) == pytest.approx(sigma * 0.05 / 24, rel=0.06)
    else:
        assert all(float(g.abs().max()) == 0 for g in got[1])
