"""Counting tries and giving work up: the terminal states of failed work.

Every try of an aggregation or of a hosted evaluation is counted in the database
before it runs (a redelivered or duplicated message counts too), so the tasks and
the sweeper can stop after the budget in ``aggregation.budgets``. A given-up piece
of work carries a reason code (``aggregation.reasons``) and the product's text; the
exception that caused it goes to the operator's log only.
"""

from __future__ import annotations

import logging

from django.db.models import F
from django.utils import timezone

from clients.models import Site

from ..models import EvaluationAttempt, ModelVersion, Round, SiteEvaluation
from ..reasons import text as reason_text
from .rounds import fail_aggregation

log = logging.getLogger(__name__)


def begin_aggregation(round_id: int) -> int:
    """Count one more try of a round's aggregation. Returns the try's number, or 0
    when the round is no longer aggregating (nothing to do)."""
    changed = Round.objects.filter(pk=round_id, status=Round.Status.AGGREGATING).update(
        aggregation_attempts=F("aggregation_attempts") + 1, aggregation_started_at=timezone.now()
    )
    # .get raises DoesNotExist for a deleted round: the task then has nothing to do.
    tries = Round.objects.values_list("aggregation_attempts", flat=True).get(pk=round_id)
    return tries if changed else 0


def give_up_aggregation(round_id: int, code: str) -> bool:
    """The round fails with ``code``; the previous global model stays the latest and
    the experiment fails. False when the round had already left aggregation."""
    return fail_aggregation(round_id, code)


def begin_evaluation(version_id: int, site_id: int) -> int:
    """Count one more try of a hosted site's evaluation of a version. Returns the
    try's number, or 0 when it is done or was given up."""
    ModelVersion.objects.only("pk").get(pk=version_id)  # DoesNotExist: nothing to do
    Site.objects.only("pk").get(pk=site_id)
    if SiteEvaluation.objects.filter(version_id=version_id, site_id=site_id).exists():
        return 0
    attempt, _ = EvaluationAttempt.objects.get_or_create(version_id=version_id, site_id=site_id)
    changed = EvaluationAttempt.objects.filter(pk=attempt.pk, status=EvaluationAttempt.Status.PENDING).update(
        attempts=F("attempts") + 1, updated_at=timezone.now()
    )
    if not changed:
        return 0
    return EvaluationAttempt.objects.values_list("attempts", flat=True).get(pk=attempt.pk)


def fail_evaluation(version_id: int, site_id: int, code: str) -> bool:
    """Record that a hosted site's evaluation of a version was given up (never sent
    again). False when it had been given up already or has succeeded meanwhile."""
    if SiteEvaluation.objects.filter(version_id=version_id, site_id=site_id).exists():
        return False
    attempt, _ = EvaluationAttempt.objects.get_or_create(version_id=version_id, site_id=site_id)
    return bool(
        EvaluationAttempt.objects.filter(pk=attempt.pk, status=EvaluationAttempt.Status.PENDING).update(
            status=EvaluationAttempt.Status.FAILED, error_code=code, error=reason_text(code),
            updated_at=timezone.now(),
        )
    )

