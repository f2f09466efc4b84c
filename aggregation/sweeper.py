"""The sweeper (Celery beat runs ``aggregation.sweep``): move on whatever a crash, a
lost message or an unreachable broker left behind, and give up what has used its
attempt budget.

Work is re-sent only once it has been quiet for ``FEDHEALTH_STALE_SECONDS``: an
aggregation whose latest try began that long ago, site work on a queue that has a
live worker (without one, a re-send would only pile up in the queue; the round's
deadline ends it as NO_WORKER), an evaluation not sent for that long. Nothing given up
(a failed update, round or evaluation) is ever sent again, and nothing past its
budget (``aggregation.budgets``) is re-sent: it is given up here instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from clients.models import Site

from . import dispatch, services
from .budgets import AGGREGATE_ROUND, EVALUATE_SITE, TRAIN_SITE
from .models import ClientUpdate, EvaluationAttempt, Experiment, ModelVersion, Round, SiteEvaluation
from .reasons import Reason
from .services import consent, failures, health

log = logging.getLogger(__name__)

# Versions older than this are no longer chased for missing evaluations.
EVALUATION_HORIZON = timedelta(days=1)


def _each(what: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One item's failure is logged and does not stop the sweep of the others."""
    try:
        return action(*args, **kwargs)
    except Exception:
        log.exception("sweep: %s %s failed", what, args)
        return 0


def sweep(now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS)
    counts = {"closed": 0, "aggregations": 0, "training": 0, "evaluations": 0, "given_up": 0}

    for round_id in Round.objects.filter(status=Round.Status.OPEN, deadline__lte=now).values_list("pk", flat=True):
        _each("closing round", services.maybe_close_round, round_id, now=now)
        counts["closed"] += 1

    quiet_aggregations = Round.objects.filter(status=Round.Status.AGGREGATING).filter(
        Q(aggregation_started_at__lte=stale) | Q(aggregation_started_at__isnull=True, closed_at__lte=stale)
    )
    for round_id, tries in quiet_aggregations.values_list("pk", "aggregation_attempts"):
        if AGGREGATE_ROUND.exhausted(tries):
            given_up = _each("giving up round", failures.give_up_aggregation, round_id, Reason.AGGREGATION_FAILED)
            counts["given_up"] += bool(given_up)
        else:
            counts["aggregations"] += bool(_each("re-sending round", dispatch.queue_aggregation, round_id))

    stuck = list(
        ClientUpdate.objects.filter(round__status=Round.Status.OPEN, site__mode=Site.Mode.HOSTED)
        .filter(Q(status=ClientUpdate.Status.PENDING, created_at__lte=stale)
                | Q(status=ClientUpdate.Status.TRAINING, started_at__lte=stale))
        .select_related("site", "round__experiment")
    )
    attended = health.attended({u.site.queue for u in stuck}, at=now)
    resend = []
    consented: dict[tuple[int, int], bool] = {}
    for update in stuck:
        key = (update.round.experiment_id, update.site_id)
        if key not in consented:
            consented[key] = consent.has_consent(update.round.experiment, update.site_id)
        if not consented[key]:  # never re-sent: closed as a dropout, so the round goes on
            code = consent.refusal_code(update.round.experiment, update.site_id)
            counts["given_up"] += bool(_each("closing update without consent", services.fail_update, update.pk, code))
        elif TRAIN_SITE.exhausted(update.attempts):
            counts["given_up"] += bool(_each("giving up update", services.fail_update, update.pk,
                                             Reason.ATTEMPTS_EXHAUSTED))
        elif update.site.queue in attended:
            resend.append(update)
    counts["training"] += _each("re-sending training", dispatch.queue_training, resend)

    evaluated = SiteEvaluation.objects.filter(version_id=OuterRef("version_id"), site_id=OuterRef("site_id"))
    exhausted = EvaluationAttempt.objects.filter(
        status=EvaluationAttempt.Status.PENDING, attempts__gte=EVALUATE_SITE.attempts, updated_at__lte=stale
    ).exclude(Exists(evaluated)).values_list("version_id", "site_id")
    for version_id, site_id in exhausted:
        counts["given_up"] += bool(_each("giving up evaluation", failures.fail_evaluation, version_id, site_id,
                                         Reason.ATTEMPTS_EXHAUSTED))
    recent = ModelVersion.objects.filter(
        created_at__lte=stale, created_at__gte=now - EVALUATION_HORIZON,
        experiment__status__in=[*Experiment.ACTIVE, Experiment.Status.COMPLETED],
    ).values_list("pk", flat=True)
    for version_id in recent:
        counts["evaluations"] += _each("re-sending evaluations", dispatch.queue_evaluations, version_id,
                                       include_training=True, quiet_since=stale)

    counts["comparisons"] = _each("sweeping comparisons", _sweep_comparisons, now, stale)

    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def _sweep_comparisons(now: datetime, stale: datetime) -> int:
    """End-of-experiment comparisons at hosted sites (site_comparison): one quiet for
    ``stale`` is given up past its budget, else sent again (its row touched, so once per
    quiet period); experiments finished more than EVALUATION_HORIZON ago are left."""
    from .budgets import COMPARE_SITE
    from .models import SiteComparison
    from .services import site_comparison

    quiet = SiteComparison.objects.filter(
        source=SiteComparison.Source.HOSTED,
        status__in=[SiteComparison.Status.PENDING, SiteComparison.Status.RUNNING],
        updated_at__lte=stale, participant__experiment__finished_at__gte=now - EVALUATION_HORIZON,
    )
    sent = 0
    resend: dict[int, list[int]] = {}
    for pk, tries, experiment_id in quiet.values_list("pk", "attempts", "participant__experiment_id"):
        if COMPARE_SITE.exhausted(tries):
            site_comparison.fail_comparison(pk, Reason.ATTEMPTS_EXHAUSTED)
            continue
        SiteComparison.objects.filter(pk=pk).update(updated_at=now)
        resend.setdefault(experiment_id, []).append(pk)
    for experiment_id, ids in resend.items():
        sent += dispatch.queue_site_comparisons(experiment_id, only=ids)
    return sent
