"""The strategy interface: how the server turns the sites' updates into the next global model.

Modelled on Flower's ``Strategy`` (``flwr/server/strategy/strategy.py``): a small abstract base
with few hooks, one module per strategy, and a variant overrides a single hook. Failures are
passed in explicitly, and ``AggregateResult.weights is None`` means "keep the previous global
model".

Two families share this base:

* streaming strategies (``FedAvg`` and its descendants) fold the updates into one running
  accumulator, so memory is O(model size) however many sites report;
* ``CoordinateWiseStrategy`` (median, trimmed mean) needs every update at once for each
  coordinate, so it materialises the valid updates; subclasses override ``_combine``.

Every strategy computes in float64 and passes its result through ``check_aggregate`` before
returning it: a non-finite or implausible aggregate is refused (``weights=None``, ``refused``
says why), so the caller keeps the previous global model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.checks import Problem, Rejected, check_aggregate, screen
from fedhealth.ml.types import Update, Weights

__all__ = [
    "AggregateResult",
    "CoordinateWiseStrategy",
    "Rejected",
    "Strategy",
    "check_count",
    "check_param",
]


@dataclass
class AggregateResult:
    """Outcome of one round's aggregation.

    Attributes:
        weights: the new global model (float32, same names/shapes/order as ``previous``, every
            value finite and of magnitude <= ``MAX_ABS_WEIGHT``), or ``None``: keep the
            previous global model (no usable update, or the aggregate was refused).
        accepted: sites whose updates were used, in arrival order. When ``refused`` is set,
            the sites whose updates passed the checks but produced no model.
        rejected: failures passed in by the caller, then updates that failed the checks (and,
            for Krum, valid updates it did not select: code ``"not_selected"``).
        num_samples: total training rows behind ``accepted``.
        refused: why the strategy produced no model although updates were valid (a
            non-finite or implausible aggregate, too few updates for Krum), else ``None``.
        refused_code: the machine code of ``refused`` (``"nonfinite"``, ``"implausible"``,
            ``"too_few"``), else ``None``.
    """

    weights: Weights | None
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    num_samples: int = 0
    refused: str | None = None
    refused_code: str | None = None

    @classmethod
    def refusal(
        cls, problem: Problem, accepted: list[str], rejected: list[Rejected], num_samples: int
    ) -> AggregateResult:
        """No new model because of ``problem``; the caller keeps the previous one."""
        return cls(
            weights=None,
            accepted=accepted,
            rejected=rejected,
            num_samples=num_samples,
            refused=problem.reason,
            refused_code=problem.code,
        )


class Strategy(ABC):
    """Server-side federated strategy.

    Subclasses set ``name`` (the registry key) and implement ``aggregate``; the other hooks have
    stateless, parameterless defaults. Constructor arguments are keyword-only hyperparameters,
    all reported by ``params()`` so that ``get_strategy(s.name, **s.params())`` rebuilds ``s``.
    """

    name: ClassVar[str]

    def configure_fit(self, round_number: int) -> dict[str, float]:
        """Extra local-training config sent to every site for round ``round_number`` (1-based)."""
        return {}

    @abstractmethod
    def aggregate(
        self,
        previous: Weights,
        updates: Iterable[Update],
        *,
        failures: Sequence[Rejected] = (),
    ) -> AggregateResult:
        """Combine the sites' updates into the next global model.

        Args:
            previous: the current global model; also the reference each update is checked
                against (names, shapes, float32).
            updates: the round's updates; may be a one-shot generator that loads each update
                lazily. Iterated exactly once.
            failures: sites that already failed (timeout, crash, bad upload); carried into
                ``AggregateResult.rejected``.

        Every update goes through ``screen`` (``update_problem``: names, shapes, float32,
        finite, ``|w| <= MAX_ABS_WEIGHT``; duplicates) and the result through
        ``check_aggregate``: the returned weights are finite and plausible, or ``None`` with
        ``refused`` saying why (a stateful strategy then keeps its state unchanged).
        """

    def state_dict(self) -> dict[str, Any]:
        """Server-side state to persist between rounds.

        Returns ``{"json": {...JSON-able...}, "arrays": {name: ndarray}}``; the arrays are a
        Weights-like mapping the caller can store with safetensors.
        """
        return {"json": {}, "arrays": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (stateless strategies accept only empty state)."""
        if state.get("json") or state.get("arrays"):
            raise ValueError(f"strategy {self.name!r} is stateless but got a non-empty state")

    def params(self) -> dict[str, float]:
        """Hyperparameters, for logging and for rebuilding the strategy with ``get_strategy``."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class CoordinateWiseStrategy(Strategy):
    """Base for robust strategies that combine each coordinate across all valid updates.

    Materialises the valid updates (memory O(number of updates x model size)); this is
    inherent to order statistics such as the median. Each parameter is stacked in float64
    (one parameter at a time), so ``_combine`` computes in float64 whatever it does.
    Subclasses override ``_combine``.
    """

    def aggregate(
        self,
        previous: Weights,
        updates: Iterable[Update],
        *,
        failures: Sequence[Rejected] = (),
    ) -> AggregateResult:
        """Check every update, then ``_combine`` each parameter across the valid ones.

        Refuses (``weights=None``, ``refused`` set) a non-finite or implausible result.
        """
        rejected = list(failures)
        valid = list(screen(updates, previous, rejected))
        if not valid:
            return AggregateResult(weights=None, rejected=rejected)
        num_samples = np.array([u.num_samples for u in valid], dtype=np.int64)
        accepted = [u.site for u in valid]
        total = int(num_samples.sum())
        weights: Weights = {}
        for name in previous:
            stacked = np.stack([u.weights[name] for u in valid], dtype=np.float64)
            combined = self._combine(stacked, num_samples)
            del stacked
            problem = check_aggregate({name: combined})  # before the float32 cast can overflow
            if problem is not None:
                return AggregateResult.refusal(problem, accepted, rejected, total)
            weights[name] = combined.astype(np.float32)
        return AggregateResult(
            weights=weights, accepted=accepted, rejected=rejected, num_samples=total
        )

    @abstractmethod
    def _combine(
        self, stacked: npt.NDArray[np.float64], num_samples: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Reduce ``stacked`` (float64, shape ``(k, *param_shape)``, one row per valid update)
        over axis 0 to a float64 array of shape ``param_shape``. ``num_samples``: ``(k,)``."""


def check_param(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a numeric hyperparameter and return it as a float.

    Raises ValueError naming the parameter and the allowed interval, e.g.
    ``beta must be in [0, 0.5), got 0.7``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}"
        interval += ")" if high_open or high is None else "]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def check_count(name: str, value: object, *, low: int, high: int) -> int:
    """Validate a whole-number hyperparameter in ``[low, high]`` and return it as an int.

    Accepts an integral float (``1.0``), since forms and JSON hand numbers over as floats.
    Raises ValueError naming the parameter, e.g. ``byzantine must be a whole number in
    [0, 1000], got 1.5``.
    """
    number = check_param(name, value, low=low, high=high)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return int(number)
