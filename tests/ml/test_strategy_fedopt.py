"""FedAdagrad / FedAdam / FedYogi against hand-computed steps, and their persisted state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fedhealth.ml.strategies import FedAdagrad, FedAdam, FedOpt, FedYogi, Rejected
from fedhealth.ml.types import Update, Weights

# eta = 0.1, beta_1 = 0.9, beta_2 = 0.99, tau = 0.05, one site, previous = [1, 2] both rounds.
HYPER = {"eta": 0.1, "beta_1": 0.9, "tau": 0.05}
PREVIOUS: Weights = {"x": np.array([1.0, 2.0], np.float32)}
ROUND_1 = Update({"x": np.array([1.5, 1.0], np.float32)}, 10, "a")  # delta = [0.5, -1]
ROUND_2 = Update({"x": np.array([1.5, 2.05], np.float32)}, 10, "a")  # delta = [0.5, 0.05]
# m1 = 0.1 * delta1 = [0.05, -0.1]; m2 = 0.9 * m1 + 0.1 * delta2 = [0.095, -0.085]


def _make(cls: type[FedOpt]) -> FedOpt:
    return cls(**HYPER) if cls is FedAdagrad else cls(**HYPER, beta_2=0.99)


@pytest.mark.parametrize(
    ("cls", "expected_1", "expected_2"),
    [
        # v1 = 0.01 * delta1^2 = [0.0025, 0.01]; w1 = 1 + 0.1 * 0.05 / (0.05 + 0.05), ...
        # v2 = 0.99 * v1 + 0.01 * delta2^2 = [0.004975, 0.009925]
        (FedAdam, [1.05, 1.9333333], [1.0788161, 1.9431910]),
        # v1 as Adam; sign(v1 - delta2^2) = [-1, +1], so
        # v2 = v1 - 0.01 * delta2^2 * [-1, +1] = [0.005, 0.009975]
        (FedYogi, [1.05, 1.9333333], [1.0787006, 1.9432860]),
        # v1 = delta1^2 = [0.25, 1]; w1 = 1 + 0.1 * 0.05 / (0.5 + 0.05), ...
        # v2 = v1 + delta2^2 = [0.5, 1.0025]
        (FedAdagrad, [1.0090909, 1.9904762], [1.0125478, 1.9919144]),
    ],
)
def test_fedopt_steps_match_hand_computation(
    cls: type[FedOpt], expected_1: list[float], expected_2: list[float]
) -> None:
    # Prepare
    strategy = _make(cls)

    # Execute
    first = strategy.aggregate(PREVIOUS, [ROUND_1])
    second = strategy.aggregate(PREVIOUS, [ROUND_2])

    # Assert
    assert first.weights is not None and second.weights is not None
    np.testing.assert_allclose(first.weights["x"], expected_1, rtol=1e-6)
    np.testing.assert_allclose(second.weights["x"], expected_2, rtol=1e-6)
    assert second.weights["x"].dtype == np.float32
    assert strategy.step == 2
    assert first.accepted == ["a"] and first.num_samples == 10


def test_fedadam_defaults() -> None:
    # Execute
    params = FedAdam().params()

    # Assert
    assert params == {"eta": 1e-2, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_state_survives_a_safetensors_and_json_round_trip(
    cls: type[FedOpt], tmp_path: Path
) -> None:
    # Prepare: round 1 on one server, which then "restarts" from disk.
    uninterrupted = _make(cls)
    restarted = _make(cls)
    uninterrupted.aggregate(PREVIOUS, [ROUND_1])
    restarted.aggregate(PREVIOUS, [ROUND_1])
    state = restarted.state_dict()
    save_file(state["arrays"], str(tmp_path / "state.safetensors"))
    (tmp_path / "state.json").write_text(json.dumps(state["json"]))
    fresh = _make(cls)

    # Execute
    fresh.load_state_dict(
        {
            "json": json.loads((tmp_path / "state.json").read_text()),
            "arrays": load_file(str(tmp_path / "state.safetensors")),
        }
    )
    expected = uninterrupted.aggregate(PREVIOUS, [ROUND_2])
    got = fresh.aggregate(PREVIOUS, [ROUND_2])

    # Assert
    assert set(state["arrays"]) == {"m.x", "v.x"}
    assert state["json"] == {"step": 1}
    assert expected.weights is not None and got.weights is not None
    np.testing.assert_array_equal(got.weights["x"], expected.weights["x"])
    assert fresh.state_dict()["json"] == {"step": 2}


def test_state_dict_is_a_snapshot() -> None:
    # Prepare
    strategy = FedAdam(**HYPER)
    strategy.aggregate(PREVIOUS, [ROUND_1])
    state = strategy.state_dict()
    snapshot = {k: a.copy() for k, a in state["arrays"].items()}

    # Execute
    strategy.aggregate(PREVIOUS, [ROUND_2])

    # Assert
    for key, array in snapshot.items():
        np.testing.assert_array_equal(state["arrays"][key], array)


def test_state_is_empty_before_the_first_round_and_untouched_without_updates() -> None:
    # Prepare
    strategy = FedAdam(**HYPER)

    # Execute
    before = strategy.state_dict()
    result = strategy.aggregate(PREVIOUS, [], failures=[Rejected("a", "timeout")])

    # Assert
    assert before == {"json": {"step": 0}, "arrays": {}}
    assert result.weights is None
    assert strategy.state_dict() == before


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"json": {}, "arrays": {}}, "non-negative integer 'step'"),
        (
            {"json": {"step": 1}, "arrays": {"x": np.zeros(2, np.float32)}},
            "unexpected state array 'x'",
        ),
        (
            {"json": {"step": 1}, "arrays": {"m.x": np.zeros(2, np.float32)}},
            "server optimiser v has parameters []",
        ),
    ],
)
def test_load_state_dict_rejects_malformed_state(state: dict[str, object], message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=None) as error:
        FedAdam().load_state_dict(state)
    assert message in str(error.value)


def test_state_for_another_model_is_refused_at_aggregation() -> None:
    # Prepare
    strategy = FedAdam(**HYPER)
    strategy.aggregate(PREVIOUS, [ROUND_1])
    bigger: Weights = {"x": np.zeros(3, np.float32)}

    # Execute / Assert
    with pytest.raises(ValueError, match=r"server optimiser state for 'x' has shape \(2,\)"):
        strategy.aggregate(bigger, [Update({"x": np.ones(3, np.float32)}, 1, "a")])
