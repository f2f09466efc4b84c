"""A site's privacy ledger and budget: the spend of every round, checked before training.

The check and the write are one transaction under a lock on the dataset row, so two
rounds of two experiments on the same dataset can never both pass a budget that has
room for one. The entry is written before the site trains: a crash afterwards leaves
an entry for an update that was never sent (an over-count), never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from clients.models import Dataset
from fedhealth.ml.privacy import RoundSpend, composed_epsilon, epsilon_for, plan_round_spend

from ..models import ClientUpdate, Experiment, Participant, PrivacyBudget, PrivacyLedgerEntry
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
            "spent": self.spent,
            "delta": self.delta,
            "budget": self.budget,
            "remaining": self.remaining,
            "rounds": self.rounds,
        }


def spends(dataset_id: int) -> list[RoundSpend]:
    return [e.spend() for e in PrivacyLedgerEntry.objects.filter(dataset_id=dataset_id)]


def budget_status(dataset: Dataset) -> BudgetStatus:
    """What the dataset has spent over all experiments, and its budget (if set)."""
    history = spends(dataset.pk)
    budget = PrivacyBudget.objects.filter(dataset=dataset).values_list("epsilon", flat=True).first()
    return BudgetStatus(
        spent=composed_epsilon(history),
        delta=max((s.delta for s in history), default=None),
        budget=budget,
        rounds=len(history),
    )


def reserve_round(
    dataset_id: int,
    experiment: Experiment,
    spend: RoundSpend,
    *,
    source: str = PrivacyLedgerEntry.Source.HOSTED,
) -> PrivacyLedgerEntry:
    """Check the next round against the dataset's budget and record its spend, atomically.

    Raises PrivacyBudgetExceeded (nothing recorded) when the ledger with this round,
    composed, would exceed the budget.
    """
    entry = _reserve(dataset_id, experiment, spend, source)
    _log_round(experiment, spend.round)
    return entry


def _reserve(
    dataset_id: int, experiment: Experiment, spend: RoundSpend, source: str
) -> PrivacyLedgerEntry:
    with transaction.atomic():
        Dataset.objects.select_for_update().only("pk").get(pk=dataset_id)
        budget = (
            PrivacyBudget.objects.filter(dataset_id=dataset_id)
            .values_list("epsilon", flat=True)
            .first()
        )
        if budget is not None:
            history = spends(dataset_id)
            after = composed_epsilon([*history, spend])
            if after > budget + _SLACK:
                raise PrivacyBudgetExceeded(
                    spent=composed_epsilon(history), after=after, budget=budget
                )
        return PrivacyLedgerEntry.objects.create(
            dataset_id=dataset_id,
            experiment=experiment,
            round_number=spend.round,
            epsilon=spend.epsilon,
            epsilon_total=spend.epsilon_total,
            delta=spend.delta,
            noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
            clip_norm=spend.clip_norm,
            source=source,
        )


def _log_round(experiment: Experiment, round_number: int) -> None:
    """The experiment log's privacy line for a round: every site's spend so far (one line
    per round, rewritten as sites reserve; a site's view of the log drops the figures)."""
    entries = PrivacyLedgerEntry.objects.filter(experiment=experiment, round_number=round_number)
    per_site = {
        e.dataset.site.slug: {
            "epsilon": e.epsilon_total,
            "delta": e.delta,
            "noise_multiplier": e.noise_multiplier,
            "clip_norm": e.clip_norm,
            "reported_by": e.source,
            "consistency": e.consistency,
        }
        for e in entries.select_related("dataset__site").order_by("created_at", "pk")
    }
    artifacts.write_log_event(
        experiment,
        {
            "event": "privacy",
            "round": round_number,
            "at": timezone.now().isoformat(),
            "per_site": per_site,
        },
    )


def set_budget(dataset: Dataset, epsilon: float | None, user=None) -> None:
    """Set (or, with ``None``, remove) a dataset's lifetime epsilon budget."""
    if epsilon is None:
        PrivacyBudget.objects.filter(dataset=dataset).delete()
        return
    if not epsilon >= 0:
        raise ValueError(f"budget epsilon must be >= 0, got {epsilon}")
    PrivacyBudget.objects.update_or_create(
        dataset=dataset, defaults={"epsilon": epsilon, "updated_by": user}
    )


# What an agent may report, with the bounds of a well-formed report (an accountant's
# figures for a real DP-SGD run lie far inside them).
_REPORT_BOUNDS: dict[str, tuple[float, float]] = {
    "noise_multiplier": (0.0, 1e4),
    "sample_rate": (0.0, 1.0),
    "delta": (0.0, 1.0),
    "clip_norm": (0.0, 1e6),
    "epsilon": (0.0, 1e6),
    "epsilon_total": (0.0, 1e6),
}
_MAX_STEPS = 10**8
# Relative tolerance of "the same figure": the agent runs the same accountant code.
_REL = 1e-6


def parse_reported_spend(data: Any, *, round_number: int) -> RoundSpend:
    """An agent's report of one round's spend, checked to be well formed and bounded.

    Raises ValueError naming the field and value. Consistency with the experiment is
    ``check_reported_spend``'s business: a well-formed but inconsistent report is
    recorded and flagged, not refused.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"must be a JSON object of the round's spend, got {type(data).__name__}")
    missing = [k for k in RoundSpend.__dataclass_fields__ if k not in data]
    unknown = sorted(set(data) - set(RoundSpend.__dataclass_fields__))
    if missing or unknown:
        raise ValueError(
            f"needs exactly the keys {sorted(RoundSpend.__dataclass_fields__)} (missing {missing}, unknown {unknown})"
        )
    values: dict[str, Any] = {}
    for name, (low, high) in _REPORT_BOUNDS.items():
        v = data[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        open_low = name in ("sample_rate", "delta", "clip_norm")
        if not (low < v if open_low else low <= v) or not (
            v < high if name == "delta" else v <= high
        ):
            raise ValueError(f"{name} = {v!r} is out of range ({low:g} to {high:g})")
        values[name] = float(v)
    for name in ("round", "steps"):
        v = data[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_STEPS:
            raise ValueError(f"{name} must be an integer from 1 to {_MAX_STEPS}, got {v!r}")
        values[name] = v
    if values["round"] != round_number:
        raise ValueError(f"round = {values['round']} but this update is for round {round_number}")
    if values["epsilon"] > values["epsilon_total"] * (1 + _REL) + 1e-12:
        raise ValueError(
            f"epsilon = {values['epsilon']} exceeds epsilon_total = {values['epsilon_total']}"
        )
    return RoundSpend(**values)


def expected_spend(update: ClientUpdate) -> RoundSpend | None:
    """What the experiment's settings give this site for this round, from the row count
    its agent registered (None: no DP, or settings the registered rows cannot meet)."""
    from .sitework import site_plan

    experiment = update.round.experiment
    settings = experiment.privacy_settings
    participant = (
        Participant.objects.select_related("dataset")
        .filter(experiment=experiment, site=update.site)
        .first()
    )
    if settings is None or participant is None or participant.dataset is None:
        return None
    rows = participant.dataset.row_count
    train_rows = rows - math.ceil(experiment.test_fraction * rows)  # as split_indices holds out
    plan = site_plan(experiment, update.site, update.round.number)
    try:
        return plan_round_spend(
            settings,
            round_number=update.round.number,
            rows=train_rows,
            epochs=plan.train.epochs,
            batch_size=plan.train.batch_size,
        )
    except ValueError:
        return None


def check_reported_spend(reported: RoundSpend, expected: RoundSpend | None) -> list[str]:
    """Why ``reported`` does not follow from the settings (empty: it does).

    Its epsilons must be what the accountant gives for its own noise, rate and steps
    (this round; ``round`` such rounds for the experiment's total), and its figures must
    match what the settings give for the site's registered rows.
    """
    problems = []
    own = epsilon_for(
        [(reported.noise_multiplier, reported.sample_rate, reported.steps)], reported.delta
    )
    total = epsilon_for(
        [(reported.noise_multiplier, reported.sample_rate, reported.steps * reported.round)],
        reported.delta,
    )
    for name, want in (("epsilon", own), ("epsilon_total", total)):
        got = getattr(reported, name)
        if not math.isclose(got, want, rel_tol=_REL, abs_tol=1e-9):
            problems.append(
                f"{name} {got:.6g} is not the accountant's {want:.6g} for the reported noise, rate and steps"
            )
    if expected is None:
        problems.append("the experiment's settings give no spend for the registered rows")
        return problems
    for name in ("noise_multiplier", "sample_rate", "steps", "delta", "clip_norm"):
        got, want = getattr(reported, name), getattr(expected, name)
        if not math.isclose(got, want, rel_tol=_REL, abs_tol=0):
            problems.append(
                f"{name} {got:.6g}, the settings give {want:.6g} for the registered rows"
            )
    return problems


def record_reported_spend(update_id: int, reported: RoundSpend) -> PrivacyLedgerEntry:
    """Record what an agent reported for its update, checked and flagged (once per update).

    The agent enforced its own budget before training; this entry is the server's
    record of that report for the pages, the version guarantees and the log. A report
    that does not follow from the settings is kept as reported and marked ``mismatch``
    with the reasons: the server never substitutes its own figure for the site's.
    """
    update = ClientUpdate.objects.select_related("round__experiment", "site").get(pk=update_id)
    existing = PrivacyLedgerEntry.objects.filter(update=update).first()
    if existing is not None:
        return existing
    experiment = update.round.experiment
    problems = check_reported_spend(reported, expected_spend(update))
    dataset_id = Participant.objects.values_list("dataset_id", flat=True).get(
        experiment=experiment, site=update.site
    )
    entry = PrivacyLedgerEntry.objects.create(
        dataset_id=dataset_id,
        experiment=experiment,
        round_number=reported.round,
        epsilon=reported.epsilon,
        epsilon_total=reported.epsilon_total,
        delta=reported.delta,
        noise_multiplier=reported.noise_multiplier,
        sample_rate=reported.sample_rate,
        steps=reported.steps,
        clip_norm=reported.clip_norm,
        source=PrivacyLedgerEntry.Source.AGENT,
        update=update,
        consistency=PrivacyLedgerEntry.Check.MISMATCH
        if problems
        else PrivacyLedgerEntry.Check.CONSISTENT,
        consistency_detail="; ".join(problems)[:500],
    )
    transaction.on_commit(lambda: _log_round(experiment, reported.round))
    return entry


__all__ = [
    "BudgetStatus",
    "PrivacyBudgetExceeded",
    "budget_status",
    "check_reported_spend",
    "expected_spend",
    "parse_reported_spend",
    "record_reported_spend",
    "reserve_round",
    "set_budget",
    "spends",
]
