"""Update checks and FedAvg, plus what every strategy shares (Prepare / Execute / Assert)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from fedhealth.ml.strategies import (
    STRATEGIES,
    FedAvg,
    Krum,
    Rejected,
    Strategy,
    check_update,
    get_strategy,
    update_problem,
)
from fedhealth.ml.strategies.checks import DUPLICATE, IMPLAUSIBLE, INVALID, NONFINITE
from fedhealth.ml.types import Update, Weights


def _weights(**arrays: npt.ArrayLike) -> Weights:
    return {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}


PREVIOUS = _weights(w=[[0, 0], [0, 0]], b=[0, 0])
GOOD = Update(_weights(w=[[1, 2], [3, 4]], b=[1, -1]), num_samples=1, site="alpha")


def _with(name: str, value: object) -> Weights:
    weights: Weights = dict(GOOD.weights)
    weights[name] = value  # type: ignore[assignment]
    return weights


BAD_UPDATES: dict[str, tuple[Callable[[], Update], str, str]] = {
    "nan": (
        lambda: Update(_weights(w=[[1.0, float("nan")], [3.0, 4.0]], b=[1, 1]), 5, "bad"),
        "parameter 'w' contains non-finite values (1 NaN, 0 Inf)",
        NONFINITE,
    ),
    "inf": (
        lambda: Update(_weights(w=[[1, 2], [3, 4]], b=[np.inf, -np.inf]), 5, "bad"),
        "parameter 'b' contains non-finite values (0 NaN, 2 Inf)",
        NONFINITE,
    ),
    "shape": (
        lambda: Update(_with("w", np.zeros((2, 3), np.float32)), 5, "bad"),
        "parameter 'w' has shape (2, 3), expected (2, 2)",
        INVALID,
    ),
    "dtype": (
        lambda: Update(_with("b", np.zeros(2, np.float64)), 5, "bad"),
        "parameter 'b' has dtype float64, expected float32",
        INVALID,
    ),
    "not_array": (
        lambda: Update(_with("b", [0.0, 0.0]), 5, "bad"),
        "parameter 'b' is not a NumPy array (got list)",
        INVALID,
    ),
    "missing": (
        lambda: Update(_weights(w=[[1, 2], [3, 4]]), 5, "bad"),
        "missing parameters: 'b'",
        INVALID,
    ),
    "extra": (
        lambda: Update(_with("c", np.zeros(1, np.float32)), 5, "bad"),
        "unexpected parameters: 'c'",
        INVALID,
    ),
    "zero_samples": (
        lambda: Update(GOOD.weights, 0, "bad"),
        "num_samples must be positive, got 0",
        INVALID,
    ),
    "float_samples": (
        lambda: Update(GOOD.weights, 2.5, "bad"),  # type: ignore[arg-type]
        "num_samples must be an integer, got float",
        INVALID,
    ),
    "implausible": (
        lambda: Update(_weights(w=[[1.0, 2.0], [3e38, -4.0]], b=[1, 1]), 2**31 - 1, "bad"),
        "parameter 'w' has a weight of magnitude 3e+38, above the plausible bound 10000",
        IMPLAUSIBLE,
    ),
    "just_implausible": (
        lambda: Update(_weights(w=[[1, 2], [3, 4]], b=[1, -10_001]), 5, "bad"),
        "parameter 'b' has a weight of magnitude 1e+04, above the plausible bound 10000",
        IMPLAUSIBLE,
    ),
}


# ---------------------------------------------------------------- check_update


def test_check_update_accepts_a_valid_update_whatever_the_key_order() -> None:
    # Prepare
    reordered = Update({"b": GOOD.weights["b"], "w": GOOD.weights["w"]}, 3, "alpha")

    # Execute
    reasons = [check_update(GOOD, PREVIOUS), check_update(reordered, PREVIOUS)]

    # Assert
    assert reasons == [None, None]


@pytest.mark.parametrize("kind", sorted(BAD_UPDATES))
def test_check_update_names_the_problem(kind: str) -> None:
    # Prepare
    make, expected, code = BAD_UPDATES[kind]

    # Execute
    reason = check_update(make(), PREVIOUS)
    problem = update_problem(make(), PREVIOUS)

    # Assert
    assert reason == expected
    assert problem == (code, expected)


def test_check_update_reports_missing_and_extra_together() -> None:
    # Prepare
    update = Update(_weights(w=[[1, 2], [3, 4]], c=[1]), 1, "x")

    # Execute
    reason = check_update(update, PREVIOUS)

    # Assert
    assert reason == "missing parameters: 'b'; unexpected parameters: 'c'"


# ---------------------------------------------------------------- FedAvg


def test_fedavg_is_the_sample_weighted_mean() -> None:
    # Prepare
    other = Update(_weights(w=[[3, 6], [-1, 0]], b=[3, 3]), num_samples=3, site="beta")

    # Execute
    result = FedAvg().aggregate(PREVIOUS, [GOOD, other])

    # Assert: (1 * GOOD + 3 * other) / 4
    assert result.weights is not None
    assert list(result.weights) == ["w", "b"]
    np.testing.assert_array_equal(result.weights["w"], [[2.5, 5.0], [0.0, 1.0]])
    np.testing.assert_array_equal(result.weights["b"], [2.5, 2.0])
    assert all(a.dtype == np.float32 for a in result.weights.values())
    assert result.accepted == ["alpha", "beta"]
    assert result.rejected == []
    assert result.num_samples == 4


def test_fedavg_accumulates_in_float64() -> None:
    # Prepare: 1e4 + 1e-4 is 1e4 in float32; a float32 accumulator would lose the small values.
    big = Update({"x": np.full(3, 1e4, np.float32)}, 1, "a")
    small = [Update({"x": np.full(3, 1e-4, np.float32)}, 1, f"s{i}") for i in range(99)]

    # Execute
    result = FedAvg().aggregate({"x": np.zeros(3, np.float32)}, [big, *small])

    # Assert: (1e4 + 99e-4) / 100 (a float32 sum gives 100.0)
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["x"], 100.000099, rtol=1e-7)


def test_fedavg_multiplies_by_num_samples_in_float64() -> None:
    # Prepare: under NEP 50, float32 weights times a Python float multiply in float32, where
    # 2**31 - 1 and 2**31 - 2 both round to 2**31: 3 * n1 - 3 * n2 would cancel to exactly 0.
    n1, n2 = 2**31 - 1, 2**31 - 2
    updates = [
        Update({"x": np.full(2, 3.0, np.float32)}, n1, "a"),
        Update({"x": np.full(2, -3.0, np.float32)}, n2, "b"),
    ]

    # Execute
    result = FedAvg().aggregate({"x": np.zeros(2, np.float32)}, updates)

    # Assert: (3 * n1 - 3 * n2) / (n1 + n2) = 3 / (2**32 - 3), about 7e-10
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["x"], 3 / (n1 + n2), rtol=1e-6)
    assert result.num_samples == n1 + n2


def test_fedavg_handles_tensors_larger_than_one_chunk() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((300, 700)).astype(np.float32) for _ in range(3)]
    updates = [Update({"w": a}, n, f"s{n}") for a, n in zip(arrays, [1, 2, 5], strict=True)]

    # Execute
    result = FedAvg().aggregate({"w": np.zeros((300, 700), np.float32)}, updates)

    # Assert
    expected = (1 * arrays[0].astype(np.float64) + 2 * arrays[1] + 5 * arrays[2]) / 8
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["w"], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(BAD_UPDATES))
def test_fedavg_rejects_a_bad_update_and_averages_the_rest(kind: str) -> None:
    # Prepare
    make, expected_reason, code = BAD_UPDATES[kind]

    # Execute
    result = FedAvg().aggregate(PREVIOUS, [make(), GOOD])

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["w"], GOOD.weights["w"])
    np.testing.assert_array_equal(result.weights["b"], GOOD.weights["b"])
    assert result.accepted == ["alpha"]
    assert result.rejected == [Rejected("bad", expected_reason, code)]
    assert result.num_samples == 1


def test_fedavg_carries_failures_and_rejects_duplicates() -> None:
    # Prepare
    failure = Rejected("gamma", "training timed out after 600 s", "timeout")
    retry = Update(_weights(w=[[9, 9], [9, 9]], b=[9, 9]), 100, "alpha")

    # Execute
    result = FedAvg().aggregate(PREVIOUS, [GOOD, retry], failures=[failure])

    # Assert
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["w"], GOOD.weights["w"])
    assert result.rejected == [
        failure,
        Rejected("alpha", "duplicate update from this site in the same round", DUPLICATE),
    ]


@pytest.mark.parametrize("strategy", [get_strategy(name) for name in STRATEGIES], ids=repr)
def test_no_valid_update_keeps_the_previous_model(strategy: Strategy) -> None:
    # Prepare
    failure = Rejected("gamma", "crashed")
    nan_update, reason, _ = BAD_UPDATES["nan"]

    # Execute
    result = strategy.aggregate(PREVIOUS, [nan_update()], failures=[failure])
    empty = strategy.aggregate(PREVIOUS, [])

    # Assert
    assert result.weights is None
    assert result.accepted == []
    assert result.rejected == [failure, Rejected("bad", reason, NONFINITE)]
    assert result.num_samples == 0
    assert empty.weights is None


def test_unnamed_updates_are_labelled_by_position() -> None:
    # Prepare
    unnamed = Update(GOOD.weights, 0)

    # Execute
    result = FedAvg().aggregate(PREVIOUS, [GOOD, unnamed])

    # Assert
    assert result.rejected == [
        Rejected("<update 1>", "num_samples must be positive, got 0", INVALID)
    ]


@pytest.mark.parametrize("strategy", [get_strategy(name) for name in STRATEGIES], ids=repr)
def test_every_strategy_screens_updates(strategy: Strategy) -> None:
    # Prepare: Krum needs 2f + 3 valid updates; identical ones, so each is selectable.
    nan_update, reason, _ = BAD_UPDATES["nan"]
    failure = Rejected("gamma", "crashed")
    count = strategy.required() if isinstance(strategy, Krum) else 1
    goods = [Update(GOOD.weights, 1, f"alpha{i}") for i in range(count)]
    used = strategy.select if isinstance(strategy, Krum) else 1

    # Execute
    result = strategy.aggregate(PREVIOUS, [nan_update(), *goods], failures=[failure])

    # Assert
    assert result.weights is not None
    assert result.accepted == [f"alpha{i}" for i in range(used)]
    assert result.rejected[:2] == [failure, Rejected("bad", reason, NONFINITE)]
    assert [r.code for r in result.rejected[2:]] == ["not_selected"] * (count - used)
    assert result.num_samples == used


class _OneShot:
    """An iterable that fails if iterated twice, and counts the updates it produced."""

    def __init__(self, updates: list[Update]) -> None:
        self._updates = updates
        self.iterations = 0
        self.produced = 0

    def __iter__(self) -> Iterator[Update]:
        self.iterations += 1
        assert self.iterations == 1, "updates iterated more than once"
        for update in self._updates:
            self.produced += 1
            yield update


def test_fedavg_consumes_a_generator_once() -> None:
    # Prepare
    other = Update(_weights(w=[[3, 6], [-1, 0]], b=[3, 3]), num_samples=3, site="beta")
    source = _OneShot([GOOD, other])

    # Execute
    result = FedAvg().aggregate(PREVIOUS, iter(source))

    # Assert
    assert source.iterations == 1
    assert source.produced == 2
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["b"], [2.5, 2.0])


def test_fedavg_memory_does_not_grow_with_the_number_of_updates() -> None:
    # Prepare: a 1 MiB model; 40 updates would be 40 MiB if held.
    shapes = {"w": (512, 384), "b": (65536,)}
    previous = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    model_bytes = sum(a.nbytes for a in previous.values())

    def lazily() -> Iterator[Update]:
        for i in range(40):
            yield Update({k: np.full(s, i, np.float32) for k, s in shapes.items()}, 1, f"s{i}")

    # Execute
    tracemalloc.start()
    try:
        result = FedAvg().aggregate(previous, lazily())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert: float64 accumulator (2x) + one update + result + 512 KiB scratch + a bool
    # temporary: ~4.5x measured, whatever the count (holding the updates would be 40x).
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights["b"][:3], [19.5, 19.5, 19.5])
    assert peak < 6 * model_bytes, f"peak {peak / model_bytes:.1f}x the model size"
