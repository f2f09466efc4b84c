"""No single site can wreck the global model: the 3e38 x (2**31 - 1) attack against every
strategy, the plausibility bound, refused aggregates and uncorrupted server state."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from fedhealth.ml.strategies import (
    MAX_ABS_WEIGHT,
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedOpt,
    FedProx,
    FedYogi,
    Rejected,
    Strategy,
    TrimmedMean,
    check_aggregate,
    checks,
    get_strategy,
    update_problem,
)
from fedhealth.ml.types import Update, Weights

PREVIOUS: Weights = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
ATTACK_ROWS = 2**31 - 1


def _model(value: float) -> Weights:
    return {k: np.full(a.shape, value, np.float32) for k, a in PREVIOUS.items()}


def _honest(count: int) -> list[Update]:
    """Honest updates near 0.5, enough for any strategy (Krum with f=1 needs 5)."""
    return [Update(_model(0.5 + 0.01 * i), 100 + i, f"honest{i}") for i in range(count)]


def _all_strategies() -> list[Strategy]:
    return [get_strategy(name) for name in STRATEGIES]


def _assert_finite_and_plausible(weights: Weights) -> None:
    for name, array in weights.items():
        assert array.dtype == np.float32, name
        assert np.isfinite(array).all(), name
        assert np.abs(array).max() <= MAX_ABS_WEIGHT, name


# ---------------------------------------------------------------- the reproduced attack


@pytest.mark.parametrize("strategy", _all_strategies(), ids=repr)
def test_the_3e38_attack_is_refused_and_the_model_stays_finite(strategy: Strategy) -> None:
    # Prepare: the reproduced attack (3e38 is finite in float32) among honest sites.
    attack = Update(_model(3e38), ATTACK_ROWS, "attacker")

    # Execute
    result = strategy.aggregate(PREVIOUS, [attack, *_honest(5)])

    # Assert
    assert result.weights is not None
    _assert_finite_and_plausible(result.weights)
    assert "attacker" not in result.accepted
    assert result.rejected[0] == Rejected(
        "attacker",
        "parameter 'w' has a weight of magnitude 3e+38, above the plausible bound 10000",
        "implausible",
    )
    assert result.refused is None and result.refused_code is None


@pytest.mark.parametrize("strategy", _all_strategies(), ids=repr)
def test_the_attack_alone_keeps_the_previous_model(strategy: Strategy) -> None:
    # Execute
    result = strategy.aggregate(PREVIOUS, [Update(_model(3e38), ATTACK_ROWS, "attacker")])

    # Assert
    assert result.weights is None
    assert result.accepted == []
    assert [r.code for r in result.rejected] == ["implausible"]


@pytest.mark.parametrize("strategy", _all_strategies(), ids=repr)
def test_the_largest_plausible_attack_gives_a_finite_plausible_model(strategy: Strategy) -> None:
    # Prepare: the worst that passes the checks: every weight at the bound, 2**31 - 1 rows.
    attack = Update(_model(-MAX_ABS_WEIGHT), ATTACK_ROWS, "attacker")

    # Execute
    result = strategy.aggregate(PREVIOUS, [attack, *_honest(5)])

    # Assert: dragged (FedAvg) or not (robust ones), but never inf or beyond the bound.
    assert result.weights is not None
    _assert_finite_and_plausible(result.weights)


@pytest.mark.parametrize("cls", [FedAvg, FedProx])
def test_sample_weighted_means_multiply_in_float64(cls: type[FedAvg]) -> None:
    # Prepare: in float32 (the old NEP 50 behaviour) both row counts round to 2**31 and the
    # two products cancel to exactly 0.
    n1, n2 = 2**31 - 1, 2**31 - 2
    updates = [Update(_model(3.0), n1, "a"), Update(_model(-3.0), n2, "b")]

    # Execute
    result = cls().aggregate(PREVIOUS, updates)

    # Assert: (3 * n1 - 3 * n2) / (n1 + n2)
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["b"], np.full(3, 3 / (n1 + n2)), rtol=1e-6)


def test_trimmed_mean_sums_in_float64() -> None:
    # Prepare: 1e4 + 1e-4 is 1e4 in float32.
    updates = [Update(_model(1e4), 1, "big")]
    updates += [Update(_model(1e-4), 1, f"s{i}") for i in range(99)]

    # Execute
    result = TrimmedMean(beta=0.0).aggregate(PREVIOUS, updates)

    # Assert: (1e4 + 99e-4) / 100
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["b"], np.full(3, 100.000099), rtol=1e-7)


# ---------------------------------------------------------------- the bound in the checks


def test_a_weight_at_the_bound_is_accepted_and_just_above_is_not() -> None:
    # Prepare
    at_bound = Update(_model(-MAX_ABS_WEIGHT), 1, "a")
    above = Update(_model(np.nextafter(np.float32(MAX_ABS_WEIGHT), np.float32(np.inf))), 1, "b")

    # Execute
    problems = [update_problem(at_bound, PREVIOUS), update_problem(above, PREVIOUS)]

    # Assert
    assert problems[0] is None
    assert problems[1] is not None and problems[1].code == "implausible"
    assert "above the plausible bound 10000" in problems[1].reason


@pytest.mark.parametrize(
    ("value", "code", "reason"),
    [
        (np.nan, "nonfinite", "the aggregate's parameter 'b' contains non-finite values (1 NaN, 0 Inf)"),
        (-np.inf, "nonfinite", "the aggregate's parameter 'b' contains non-finite values (0 NaN, 1 Inf)"),
        (3e38, "implausible", "the aggregate's parameter 'b' has a weight of magnitude 3e+38, above the plausible bound 10000"),
        (1e300, "implausible", "the aggregate's parameter 'b' has a weight of magnitude 1e+300, above the plausible bound 10000"),
    ],
)  # fmt: skip
def test_check_aggregate_names_the_problem(value: float, code: str, reason: str) -> None:
    # Prepare: float64, as the strategies check before their float32 cast.
    aggregate = {"w": np.zeros(4), "b": np.array([0.0, value, 1.0])}

    # Execute
    problem = check_aggregate(aggregate)

    # Assert
    assert problem == (code, reason)
    assert check_aggregate({"w": np.full(4, MAX_ABS_WEIGHT), "empty": np.zeros(0)}) is None


def test_rejected_keeps_its_positional_constructor() -> None:
    # Execute
    plain = Rejected("gamma", "timed out")
    coded = Rejected("gamma", "timed out", code="missed_deadline")

    # Assert
    assert plain.code == "failed"
    assert coded.code == "missed_deadline"
    assert plain != coded


# ---------------------------------------------------------------- refused aggregates


@pytest.mark.parametrize("strategy", _all_strategies(), ids=repr)
def test_every_strategy_refuses_an_implausible_aggregate(
    strategy: Strategy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: updates of 50 pass the checks; once the last is screened, the bound drops to
    # 10, so only the check on the aggregate can stop the result.
    updates = [Update(_model(50.0 + i), 10, f"s{i}") for i in range(5)]

    def then_lower_the_bound() -> Iterator[Update]:
        yield from updates
        monkeypatch.setattr(checks, "MAX_ABS_WEIGHT", 10.0)

    # Execute
    result = strategy.aggregate(PREVIOUS, then_lower_the_bound())

    # Assert
    assert result.weights is None
    assert result.refused_code == "implausible"
    assert result.refused is not None
    assert "the aggregate's parameter 'w' has a weight of magnitude" in result.refused
    assert "above the plausible bound 10" in result.refused
    assert result.accepted and result.num_samples == 10 * len(result.accepted)


@pytest.mark.parametrize(
    ("cls", "eta"),
    # The first step moves each weight by ~0.99 eta (Adam, Yogi) or ~0.1 eta (Adagrad): 5.9e3
    # or 6.0e3; the second by ~1.34 eta: 1.4e4, above the bound.
    [(FedAdam, 6e3), (FedYogi, 6e3), (FedAdagrad, 6e4)],
)
def test_a_refused_server_step_leaves_the_optimiser_state_untouched(
    cls: type[FedOpt], eta: float
) -> None:
    # Prepare
    strategy, control = cls(eta=eta), cls(eta=eta)
    push = {"w": np.full((2, 3), 1, np.float32), "b": np.array([1, -1, 1], np.float32)}
    first = strategy.aggregate(PREVIOUS, [Update(push, 10, "a")])
    control.aggregate(PREVIOUS, [Update(push, 10, "a")])
    assert first.weights is not None
    _assert_finite_and_plausible(first.weights)
    w1 = first.weights
    before = strategy.state_dict()

    # Execute: the same push again would step beyond the bound; then a round back.
    again = {k: w1[k] + push[k] for k in w1}
    refused = strategy.aggregate(w1, [Update(again, 10, "a")])
    state_after_refusal = strategy.state_dict()
    gentle = {k: w1[k] - push[k] for k in w1}  # back: momentum and push nearly cancel
    after = strategy.aggregate(w1, [Update(gentle, 10, "a")])
    expected = control.aggregate(w1, [Update(gentle, 10, "a")])

    # Assert: refused, the state exactly as before, and the next round as if it never happened.
    assert refused.weights is None
    assert refused.refused_code == "implausible"
    assert refused.accepted == ["a"]
    assert state_after_refusal["json"] == before["json"] == {"step": 1}
    assert state_after_refusal["arrays"].keys() == before["arrays"].keys()
    for key, array in before["arrays"].items():
        np.testing.assert_array_equal(state_after_refusal["arrays"][key], array)
    assert after.weights is not None and expected.weights is not None
    for name in PREVIOUS:
        np.testing.assert_array_equal(after.weights[name], expected.weights[name])
    assert strategy.state_dict()["json"] == control.state_dict()["json"] == {"step": 2}
