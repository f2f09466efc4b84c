"""HealthNet construction, deterministic init and the weights <-> model bridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhealth.ml.model import (
    HealthNet,
    ModelConfig,
    build_model,
    get_weights,
    init_weights,
    num_parameters,
    set_weights,
    weight_spec,
)

DEFAULT_KEYS = [
    "hidden.0.weight",
    "hidden.0.bias",
    "hidden.1.weight",
    "hidden.1.bias",
    "hidden.2.weight",
    "hidden.2.bias",
    "out.weight",
    "out.bias",
]


def test_default_architecture_matches_weight_spec() -> None:
    # Prepare
    cfg = ModelConfig(n_features=4)

    # Execute
    model = build_model(cfg)
    spec = weight_spec(cfg)

    # Assert
    assert list(spec) == DEFAULT_KEYS
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec
    assert spec["hidden.0.weight"] == (64, 4)
    assert spec["hidden.2.weight"] == (16, 32)
    assert spec["out.weight"] == (1, 16)


def test_empty_hidden_is_logistic_regression() -> None:
    # Prepare
    cfg = ModelConfig(n_features=3, hidden=())
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])

    # Execute
    model = build_model(cfg)
    set_weights(model, {"out.weight": np.array([[0.5, -1.0, 2.0]]), "out.bias": np.array([0.25])})
    logits = model(x)

    # Assert
    assert list(weight_spec(cfg)) == ["out.weight", "out.bias"]
    np.testing.assert_allclose(
        logits.detach().numpy(), [0.5 - 2 + 6 + 0.25, 1 + 1 + 0.25], rtol=1e-6
    )


def test_forward_returns_one_logit_per_row() -> None:
    # Prepare
    model = build_model(ModelConfig(n_features=5)).eval()

    # Execute
    out = model(torch.zeros(7, 5))

    # Assert
    assert out.shape == (7,)
    assert out.dtype == torch.float32


def test_num_parameters_hand_computed() -> None:
    # Prepare / Execute / Assert: (4*64+64) + (64*32+32) + (32*16+16) + (16+1)
    assert num_parameters(ModelConfig(n_features=4)) == 320 + 2080 + 528 + 17
    assert num_parameters(ModelConfig(n_features=9, hidden=())) == 10
    assert num_parameters(ModelConfig(n_features=4)) == sum(
        p.numel() for p in build_model(ModelConfig(n_features=4)).parameters()
    )


def test_init_weights_is_deterministic_per_seed() -> None:
    # Prepare
    cfg = ModelConfig(n_features=6)

    # Execute
    a, b, c = init_weights(cfg, seed=7), init_weights(cfg, seed=7), init_weights(cfg, seed=8)

    # Assert
    assert list(a) == DEFAULT_KEYS
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_building_a_model_leaves_global_rng_alone() -> None:
    # Prepare
    state = torch.random.get_rng_state()

    # Execute
    build_model(ModelConfig(n_features=4), seed=3)
    init_weights(ModelConfig(n_features=4), seed=4)

    # Assert
    assert torch.equal(state, torch.random.get_rng_state())


def test_get_weights_returns_independent_float32_copies() -> None:
    # Prepare
    model = build_model(ModelConfig(n_features=4))

    # Execute
    weights = get_weights(model)
    weights["out.bias"][0] = 123.0

    # Assert
    assert all(w.dtype == np.float32 for w in weights.values())
    assert model.out.bias.item() == 0.0


def test_set_weights_round_trip() -> None:
    # Prepare
    cfg = ModelConfig(n_features=4)
    weights = init_weights(cfg, seed=11)
    model = build_model(cfg)

    # Execute
    set_weights(model, weights)
    got = get_weights(model)

    # Assert
    assert list(got) == list(weights)
    for key in weights:
        np.testing.assert_array_equal(got[key], weights[key])


def test_set_weights_accepts_read_only_float64_arrays() -> None:
    # Prepare
    cfg = ModelConfig(n_features=2, hidden=())
    weight = np.array([[1.5, -2.0]], dtype=np.float64)
    weight.setflags(write=False)

    # Execute
    model = build_model(cfg)
    set_weights(model, {"out.weight": weight, "out.bias": np.zeros(1)})

    # Assert
    np.testing.assert_array_equal(get_weights(model)["out.weight"], [[1.5, -2.0]])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda w: w.update({"hidden.1.weight": np.zeros((32, 63), np.float32)}),
            "hidden.1.weight",
        ),
        (lambda w: w.pop("out.bias"), "out.bias"),
        (lambda w: w.update({"extra.weight": np.zeros(3, np.float32)}), "extra.weight"),
        (lambda w: w.update({"out.bias": np.array(["x"])}), "out.bias"),
    ],
    ids=["wrong-shape", "missing", "extra", "not-numeric"],
)
def test_set_weights_rejects_bad_weights_naming_the_parameter(mutate, message: str) -> None:
    # Prepare
    cfg = ModelConfig(n_features=4)
    model = build_model(cfg, seed=1)
    before = get_weights(model)
    bad = init_weights(cfg, seed=2)
    mutate(bad)

    # Execute / Assert
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        set_weights(model, bad)
    for key, value in get_weights(model).items():  # untouched on failure
        np.testing.assert_array_equal(value, before[key])


def test_dropout_with_generator_is_reproducible_and_only_in_training() -> None:
    # Prepare
    model = HealthNet(ModelConfig(n_features=3, dropout=0.5)).train()
    x = torch.ones(64, 3)

    # Execute
    model.generator = torch.Generator().manual_seed(5)
    first = model(x)
    model.generator = torch.Generator().manual_seed(5)
    second = model(x)
    model.eval()
    evaluated = model(x)

    # Assert
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, evaluated)
    torch.testing.assert_close(evaluated, model(x), rtol=0, atol=0)


def test_model_config_dict_round_trip() -> None:
    # Prepare
    cfg = ModelConfig(n_features=12, hidden=(8, 4), dropout=0.1)

    # Execute
    data = cfg.to_dict()

    # Assert
    assert data == {"n_features": 12, "hidden": [8, 4], "dropout": 0.1}
    assert ModelConfig.from_dict(data) == cfg
    assert ModelConfig.from_dict({"n_features": 3}) == ModelConfig(n_features=3)
    assert ModelConfig.from_dict({"n_features": 3, "hidden": []}).hidden == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "missing 'n_features'"),
        ({"n_features": 0}, "n_features must be >= 1"),
        ({"n_features": "4"}, "n_features must be an int"),
        ({"n_features": True}, "n_features must be an int"),
        ({"n_features": 4, "hidden": [8, 0]}, "hidden must be"),
        ({"n_features": 4, "hidden": "64"}, "hidden must be"),
        ({"n_features": 4, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"n_features": 4, "layers": 3}, "unknown model config keys"),
        ([4], "must be a JSON object"),
    ],
)
def test_model_config_from_dict_rejects_bad_input(data: object, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)  # type: ignore[arg-type]
