"""A site's privacy ledger and budget: the spend of every round, checked before training.

The check and the write are one transaction under a lock on the dataset row, so two
rounds of two experiments on the same dataset can never both pass a budget that has
room for one. The entry is written before the site trains: a crash afterwards leaves
an entry for an update that was never sent (an over-count), never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from clients.models import Dataset
from fedhealth.ml.privacy import RoundSpend, composed_epsilon

from ..models import Experiment, PrivacyBudget, PrivacyLedgerEntry
from ..reasons import Reason
from . import artifacts

# Float slack on the budget comparison (the accountant's figures are exact to ~1e-12).
_SLACK = 1e-9


class PrivacyBudgetExceeded(Exception):
    """Training the next round would take the dataset past its lifetime budget."""

    code = Reason.PRIVACY_BUDGET

    def __init__(self, *, spent: float, after: float, budget: float) -> None:
        self.spent, self.after, self.budget = spent, after, budget
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return (
            f"Spent epsilon {self.spent:.3f} of {self.budget:.3f}; this round would reach "
            f"{self.after:.3f}."
        )


@dataclass(frozen=True)
class BudgetStatus:
    """A dataset's lifetime figures: ``spent`` at ``delta`` (all rounds composed)."""

    spent: float
    delta: float | None
    budget: float | None
    rounds: int

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget - self.spent)

    def to_dict(self) -> dict:
        return {
            "spent": self.spent, "delta": self.delta, "budget": self.budget,
            "remaining": self.remaining, "rounds": self.rounds,
        }


def spends(dataset_id: int) -> list[RoundSpend]:
    return [e.spend() for e in PrivacyLedgerEntry.objects.filter(dataset_id=dataset_id)]


def budget_status(dataset: Dataset) -> BudgetStatus:
    """What the dataset has spent over all experiments, and its budget (if set)."""
    history = spends(dataset.pk)
    budget = PrivacyBudget.objects.filter(dataset=dataset).values_list("epsilon", flat=True).first()
    return BudgetStatus(
        spent=composed_epsilon(history), delta=max((s.delta for s in history), default=None),
        budget=budget, rounds=len(history),
    )


def reserve_round(
    dataset_id: int, experiment: Experiment, spend: RoundSpend, *, source: str = PrivacyLedgerEntry.Source.HOSTED
) -> PrivacyLedgerEntry:
    """Check the next round against the dataset's budget and record its spend, atomically.

    Raises PrivacyBudgetExceeded (nothing recorded) when the ledger with this round,
    composed, would exceed the budget.
    """
    entry = _reserve(dataset_id, experiment, spend, source)
    _log_round(experiment, spend.round)
    return entry


def _reserve(dataset_id: int, experiment: Experiment, spend: RoundSpend, source: str) -> PrivacyLedgerEntry:
    with transaction.atomic():
        Dataset.objects.select_for_update().only("pk").get(pk=dataset_id)
        budget = PrivacyBudget.objects.filter(dataset_id=dataset_id).values_list("epsilon", flat=True).first()
        if budget is not None:
            history = spends(dataset_id)
            after = composed_epsilon([*history, spend])
            if after > budget + _SLACK:
                raise PrivacyBudgetExceeded(spent=composed_epsilon(history), after=after, budget=budget)
        return PrivacyLedgerEntry.objects.create(
            dataset_id=dataset_id, experiment=experiment, round_number=spend.round, epsilon=spend.epsilon,
            epsilon_total=spend.epsilon_total, delta=spend.delta, noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate, steps=spend.steps, clip_norm=spend.clip_norm, source=source,
        )


def _log_round(experiment: Experiment, round_number: int) -> None:
    """The experiment log's privacy line for a round: every site's spend so far (one line
    per round, rewritten as sites reserve; a site's view of the log drops the figures)."""
    entries = PrivacyLedgerEntry.objects.filter(experiment=experiment, round_number=round_number)
    per_site = {
        e.dataset.site.slug: {
            "epsilon": e.epsilon_total, "delta": e.delta, "noise_multiplier": e.noise_multiplier,
            "clip_norm": e.clip_norm,
        }
        for e in entries.select_related("dataset__site").order_by("created_at", "pk")
    }
    artifacts.write_log_event(experiment, {
        "event": "privacy", "round": round_number, "at": timezone.now().isoformat(), "per_site": per_site,
    })


def set_budget(dataset: Dataset, epsilon: float | None, user=None) -> None:
    """Set (or, with ``None``, remove) a dataset's lifetime epsilon budget."""
    if epsilon is None:
        PrivacyBudget.objects.filter(dataset=dataset).delete()
        return
    if not epsilon >= 0:
        raise ValueError(f"budget epsilon must be >= 0, got {epsilon}")
    PrivacyBudget.objects.update_or_create(dataset=dataset, defaults={"epsilon": epsilon, "updated_by": user})


__all__ = ["BudgetStatus", "PrivacyBudgetExceeded", "budget_status", "reserve_round", "set_budget", "spends"]
