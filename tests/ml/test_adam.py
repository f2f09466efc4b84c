"""FusedAdam makes exactly torch.optim.Adam(fused=True)'s updates."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedhealth.ml.adam import FusedAdam
from fedhealth.ml.model import ModelConfig, build_model, get_weights, init_weights, set_weights


def _run(make_optimizer, set_lr, steps=40, frozen=()):
    cfg = ModelConfig(n_features=4)
    model = build_model(cfg)
    set_weights(model, init_weights(cfg, 3))
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    optimizer = make_optimizer(list(model.parameters()))
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = torch.randn(32, 4, generator=gen)
        y = (x[:, 0] + 0.3 * x[:, 1] > 0).float()
        set_lr(optimizer, 3e-3 * (1 - step / (2 * steps)))
        optimizer.zero_grad(
            **({"set_to_none": True} if isinstance(optimizer, torch.optim.Optimizer) else {})
        )
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
    return get_weights(model)


def _torch(params):
    return torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4, fused=True)


def _ours(params):
    return FusedAdam(params, lr=3e-3, weight_decay=1e-4)


def _set_torch_lr(optimizer, lr):
    optimizer.param_groups[0]["lr"] = lr


def _set_our_lr(optimizer, lr):
    optimizer.lr = lr


@pytest.mark.parametrize("frozen", [(), ("out.weight", "out.bias")])
def test_bit_identical_to_torch_fused_adam(frozen):
    expected = _run(_torch, _set_torch_lr, frozen=frozen)
    actual = _run(_ours, _set_our_lr, frozen=frozen)

    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_moves_the_weights_and_skips_parameters_without_gradient():
    start = init_weights(ModelConfig(n_features=4), 3)
    trained = _run(_ours, _set_our_lr, steps=5, frozen=("out.weight",))

    np.testing.assert_array_equal(trained["out.weight"], start["out.weight"])
    assert not np.array_equal(trained["out.bias"], start["out.bias"])
