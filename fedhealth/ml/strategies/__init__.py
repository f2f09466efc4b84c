"""Server-side federated strategies and their registry.

``get_strategy("fedadam", eta=0.05)`` builds a strategy from a name and hyperparameters, as
stored on an experiment; ``STRATEGIES`` maps each name to its class.
"""

from __future__ import annotations

import inspect

from fedhealth.ml.strategies.base import (
    AggregateResult,
    CoordinateWiseStrategy,
    Rejected,
    Strategy,
)
from fedhealth.ml.strategies.checks import (
    MAX_ABS_WEIGHT,
    Problem,
    check_aggregate,
    check_update,
    update_problem,
)
from fedhealth.ml.strategies.fedavg import FedAvg
from fedhealth.ml.strategies.fedmedian import FedMedian
from fedhealth.ml.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedhealth.ml.strategies.fedprox import FedProx
from fedhealth.ml.strategies.krum import Krum, MultiKrum
from fedhealth.ml.strategies.trimmed_mean import TrimmedMean

__all__ = [
    "MAX_ABS_WEIGHT",
    "STRATEGIES",
    "AggregateResult",
    "CoordinateWiseStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "Problem",
    "Rejected",
    "Strategy",
    "TrimmedMean",
    "check_aggregate",
    "check_update",
    "get_strategy",
    "strategy_params",
    "update_problem",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedMedian,
        TrimmedMean,
        Krum,
        MultiKrum,
    )
}


def strategy_params(name: str) -> dict[str, float]:
    """The hyperparameters strategy ``name`` accepts, with their defaults."""
    cls = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def get_strategy(name: str, **params: float) -> Strategy:
    """Build the strategy registered as ``name`` with the given hyperparameters.

    Raises ValueError naming the valid strategies for an unknown ``name``, the valid
    parameters for an unknown parameter, and the allowed range for an out-of-range value.
    """
    valid = strategy_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        accepted = ", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for strategy {name!r}; "
            f"valid parameters: {accepted}"
        )
    return _lookup(name)(**params)


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}"
        ) from None
