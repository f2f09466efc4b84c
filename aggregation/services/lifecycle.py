"""Experiment lifecycle: start, pause, resume, cancel, and opening rounds.

Each transition locks the experiment row and checks the current status, so two
coordinators clicking at once (or a retried request) cannot start an experiment twice.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from clients.models import Site
from clients.policy import join_problems
from fedhealth.ml.stats import Normalizer, SufficientStats, merge_stats
from fedhealth.ml.strategies import get_strategy

from .. import dispatch
from ..models import ClientUpdate, Experiment, Round
from ..reasons import Reason
from ..reasons import text as reason_text
from . import artifacts, consent, site_comparison
from .schema_fit import fit_problems


class TransitionError(Exception):
    """The experiment is not in a state that allows this action."""


def _locked(experiment_id: int) -> Experiment:
    return Experiment.objects.select_for_update().get(pk=experiment_id)


def check_ready(experiment: Experiment) -> list[str]:
    """Reasons the experiment cannot start yet (empty when it can).

    Start waits for the quorum: at least ``min_sites`` invited sites must have accepted
    the current terms with a dataset that is ready. Sites that have not accepted do not
    block the start; they are simply never trained on (``select_sites``).
    """
    problems: list[str] = []
    try:
        get_strategy(experiment.strategy, **experiment.strategy_params)
    except ValueError as exc:
        problems.append(str(exc))
    invited = experiment.participants.count()
    ready: list = []
    for p in consent.consenting(experiment):
        if not p.site.is_active:
            problems.append(f"site {p.site.name} is deactivated")
        elif fit := fit_problems(p.dataset, experiment.schema):
            problems.extend(fit)
        else:  # the disclosure limits, checked again: a draft may predate them
            found = join_problems(p.dataset)
            problems.extend(found)
            if not found:
                ready.append(p)
    if len(ready) < experiment.min_sites:
        problems.append(
            f"waiting for sites to accept: {len(ready)} of the {invited} invited sites have accepted "
            f"the current terms with a ready dataset, and at least {experiment.min_sites} are required"
        )
    return problems


def start_experiment(experiment_id: int) -> Experiment:
    """DRAFT -> RUNNING: fix the normaliser and initial weights, open round 1."""
    experiment = Experiment.objects.get(pk=experiment_id)
    if experiment.status != Experiment.Status.DRAFT:
        raise TransitionError(f"only a draft experiment can start (this one is {experiment.status})")
    problems = check_ready(experiment)
    if problems:
        raise TransitionError("; ".join(problems))
    # Global normalisation from each site's sufficient statistics: no rows needed.
    stats = [SufficientStats.from_dict(p.dataset.stats) for p in consent.consenting(experiment)]
    normalizer = Normalizer.from_stats(merge_stats(stats))
    from fedhealth.ml.model import init_weights  # torch: only where weights are made

    weights = init_weights(experiment.model_config, experiment.seed)
    # Written before the transaction (slow I/O stays outside it); the name is fixed, so
    # a retry simply rewrites the same file.
    sha = artifacts.save_weights(artifacts.initial_name(experiment), weights)
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != Experiment.Status.DRAFT:
            raise TransitionError(f"only a draft experiment can start (this one is {experiment.status})")
        experiment.normalizer = normalizer.to_dict()
        experiment.initial_weights = artifacts.initial_name(experiment)
        experiment.initial_sha256 = sha
        experiment.status = Experiment.Status.RUNNING
        experiment.started_at = timezone.now()
        experiment.failure_reason = ""
        experiment.save()
        artifacts.write_log_event(experiment, {
            "event": "started", "round": 0, "at": timezone.now().isoformat(),
            "config": experiment.federated_config().to_dict(),
            "sites": sorted(p.site.slug for p in consent.consenting(experiment)),
        })
        open_round(experiment, 1)
        audit.record(audit.Kind.EXPERIMENT_START, target=f"experiment {experiment.pk}", details={"name": experiment.name})
    return experiment


def select_sites(experiment: Experiment, round_number: int) -> list[Site]:
    """The sites asked to train this round: a seeded sample of the active participants
    whose admins accepted the current terms and have not withdrawn (consent.consenting)."""
    sites = [p.site for p in consent.consenting(experiment) if p.site.is_active]
    k = min(len(sites), max(experiment.min_sites, math.ceil(experiment.fraction_fit * len(sites))))
    if k >= len(sites):
        return sites
    # Site-level DP's accounting amplifies by sampling only if nobody can tell which
    # sites were chosen: a selection from the experiment's seed could be replayed, so it
    # comes from the operating system (chosen once: the round's updates record it).
    secret = experiment.dp_mode == Experiment.DPMode.SITE
    rng = np.random.default_rng() if secret else np.random.default_rng([experiment.seed, round_number])
    chosen = sorted(rng.choice(len(sites), size=k, replace=False))
    return [sites[i] for i in chosen]


def open_round(experiment: Experiment, number: int) -> Round:
    """Create round ``number`` with a pending update per selected site and queue the
    hosted sites' training once the transaction commits. Caller holds the lock."""
    round_, created = Round.objects.get_or_create(
        experiment=experiment,
        number=number,
        defaults={"deadline": timezone.now() + timedelta(seconds=experiment.round_timeout)},
    )
    if created:
        ClientUpdate.objects.bulk_create(
            ClientUpdate(round=round_, site=site) for site in select_sites(experiment, number)
        )
        artifacts.write_log_event(experiment, {
            "event": "round_opened", "round": number, "at": timezone.now().isoformat(),
            "sites": sorted(round_.updates.values_list("site__slug", flat=True)),
        })
    transaction.on_commit(lambda: dispatch.queue_round_training(round_.pk))
    return round_


def advance(experiment: Experiment, finished_round: int) -> None:
    """After a round completes: open the next one, or complete the experiment.
    A paused experiment waits here until resumed. Caller holds the lock."""
    if experiment.status != Experiment.Status.RUNNING:
        return
    stop = finished_round < experiment.num_rounds and stalled(experiment)
    if finished_round >= experiment.num_rounds or stop:
        experiment.status = Experiment.Status.COMPLETED
        experiment.finished_at = timezone.now()
        fields = ["status", "finished_at"]
        event = {"event": "completed", "round": finished_round, "at": timezone.now().isoformat()}
        if stop:
            experiment.finish_code = Reason.EARLY_STOPPED
            experiment.stopped_after_round = finished_round
            fields += ["finish_code", "stopped_after_round"]
            event["early_stopped"] = True
        experiment.save(update_fields=fields)
        artifacts.write_log_event(experiment, event)
        site_comparison.open_comparisons(experiment)
    else:
        open_round(experiment, finished_round + 1)


def stalled(experiment: Experiment) -> bool:
    """Whether early stopping ends the experiment now: the sites' weighted validation
    loss has not improved on the best for ``early_stopping`` scored versions.

    Only versions scored by as many sites as the best-covered one count (as
    ``selection.best_version`` compares them). A version is scored when the sites
    evaluate it, at the start of their next round's training, so when round N is
    aggregated the newest scored version is usually N-1: the stop comes one round
    after the patience ran out, never before.
    """
    from .selection import best_version

    patience = experiment.early_stopping
    if not patience or not experiment.validation_fraction:
        return False
    versions = [v for v in experiment.versions.all() if (v.metrics or {}).get("validation_loss") is not None]
    best = best_version(versions)
    if best is None:
        return False
    coverage = best.metrics.get("validation_sites", 0)
    newest = max(v.version for v in versions if v.metrics.get("validation_sites", 0) == coverage)
    return newest - best.version >= patience


def pause_experiment(experiment_id: int) -> Experiment:
    """RUNNING -> PAUSED: the round in flight finishes; no new round opens."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != Experiment.Status.RUNNING:
            raise TransitionError(f"only a running experiment can pause (this one is {experiment.status})")
        experiment.status = Experiment.Status.PAUSED
        experiment.save(update_fields=["status"])
        audit.record(audit.Kind.EXPERIMENT_PAUSE, target=f"experiment {experiment.pk}", details={"name": experiment.name})
    return experiment


def resume_experiment(experiment_id: int) -> Experiment:
    """PAUSED -> RUNNING, opening the next round if the last one finished meanwhile."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != Experiment.Status.PAUSED:
            raise TransitionError(f"only a paused experiment can resume (this one is {experiment.status})")
        experiment.status = Experiment.Status.RUNNING
        experiment.save(update_fields=["status"])
        last = experiment.rounds.order_by("-number").first()
        if last is not None and last.status == Round.Status.COMPLETED:
            advance(experiment, last.number)
        audit.record(audit.Kind.EXPERIMENT_RESUME, target=f"experiment {experiment.pk}", details={"name": experiment.name})
    return experiment


def cancel_experiment(experiment_id: int, reason: str = "cancelled by the coordinator") -> Experiment:
    """Any unfinished experiment -> CANCELLED; its open round fails, pending work is dropped."""
    experiment = _finish(experiment_id, Experiment.Status.CANCELLED, reason)
    audit.record(audit.Kind.EXPERIMENT_CANCEL, target=f"experiment {experiment.pk}", details={"name": experiment.name})
    return experiment


def fail_experiment(experiment_id: int, reason: str, *, code: str = Reason.ROUND_FAILED) -> Experiment:
    """RUNNING/PAUSED -> FAILED with a product-made ``reason`` and its ``code``
    (aggregation.reasons); the latest global model stays what it was."""
    return _finish(experiment_id, Experiment.Status.FAILED, reason, code)


def _finish(experiment_id: int, status: str, reason: str, code: str = "") -> Experiment:
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status in Experiment.FINISHED:
            raise TransitionError(f"the experiment is already {experiment.status}")
        now = timezone.now()
        open_rounds = experiment.rounds.filter(status__in=[Round.Status.OPEN, Round.Status.AGGREGATING])
        ClientUpdate.objects.filter(
            round__in=open_rounds, status__in=[ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING]
        ).update(status=ClientUpdate.Status.FAILED, error_code=Reason.EXPERIMENT_ENDED,
                 error=reason_text(Reason.EXPERIMENT_ENDED))
        open_rounds.update(status=Round.Status.FAILED, failure_reason=reason, failure_code=code, closed_at=now)
        experiment.status = status
        experiment.failure_reason = reason
        experiment.failure_code = code
        experiment.finished_at = now
        experiment.save(update_fields=["status", "failure_reason", "failure_code", "finished_at"])
        artifacts.write_log_event(experiment, {"event": status, "round": None, "reason": reason,
                                               "at": now.isoformat()})
    return experiment
