"""Celery tasks: thin wrappers that load by id and call one service.

Each task has a ``queue_<name>()`` producer beside it that owns routing (site work
goes to the site's own queue) and the "nothing left to do" check. Tasks are safe to
run twice: every state change they make is guarded in the database.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import OperationalError
from django.db.models import Q
from django.utils import timezone

from clients.models import Site

from . import services
from .models import ClientUpdate, Experiment, ModelVersion, Participant, Round, SiteEvaluation

log = logging.getLogger(__name__)
T = TypeVar("T")

# Transient failures worth retrying: the database briefly unavailable or locked, a
# storage hiccup. Anything else is a bug or bad data and fails at once.
TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
# 5 retries with exponential backoff capped at 60 s (+ jitter): ~2 minutes in all,
# well inside a round's default 30-minute deadline.
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True,
         "max_retries": 5}
SITE_WORK = {"acks_late": True, "reject_on_worker_lost": True, **RETRY}


# -- local training at a site -----------------------------------------------------

def _unless_gone(work: Callable[..., T]) -> Callable[..., T | str]:
    """A message can outlive its object (an experiment deleted, a database reset):
    there is nothing to do then, and retrying would not change that."""

    @functools.wraps(work)
    def run(*args: Any) -> T | str:
        try:
            return work(*args)
        except ObjectDoesNotExist as exc:
            log.warning("%s%s: %s; nothing to do", work.__name__, args, exc)
            return "gone"

    return run


@shared_task(name="aggregation.train_site", **SITE_WORK)
@_unless_gone
def train_site(update_id: int) -> str:
    return services.train_hosted_update(update_id)


def queue_round_training(round_id: int) -> int:
    """Send each hosted site's pending update of a round to that site's queue."""
    updates = ClientUpdate.objects.filter(
        round_id=round_id, round__status=Round.Status.OPEN,
        status__in=[ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING],
        site__mode=Site.Mode.HOSTED,
    ).select_related("site")
    n = 0
    for update in updates:
        train_site.apply_async(args=[update.pk], queue=update.site.queue)
        n += 1
    return n


# -- aggregation on the server ----------------------------------------------------

@shared_task(name="aggregation.aggregate_round", acks_late=True, reject_on_worker_lost=True, **RETRY)
@_unless_gone
def aggregate_round(round_id: int) -> int | None:
    version = services.aggregate_round(round_id)
    return version.version if version else None


def queue_aggregation(round_id: int) -> bool:
    if not Round.objects.filter(pk=round_id, status=Round.Status.AGGREGATING).exists():
        return False
    aggregate_round.apply_async(args=[round_id], queue=settings.FEDHEALTH_SERVER_QUEUE)
    return True


# -- federated evaluation at each site ----------------------------------------------

@shared_task(name="aggregation.evaluate_site", **SITE_WORK)
@_unless_gone
def evaluate_site(version_id: int, site_id: int) -> str:
    return services.evaluate_hosted(version_id, site_id)


def queue_evaluations(version_id: int, *, include_training: bool = False) -> int:
    """Ask every hosted participant that has not yet evaluated a version to do so.

    Sites training in the next round evaluate the version at the start of that task
    (they hold it already), so they are skipped unless ``include_training``: the
    sweeper sets it when such an evaluation went missing.
    """
    version = ModelVersion.objects.get(pk=version_id)
    done = SiteEvaluation.objects.filter(version=version).values_list("site_id", flat=True)
    training = ClientUpdate.objects.filter(
        round__experiment_id=version.experiment_id, round__number=version.version + 1,
        status__in=[ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING],
    ).values_list("site_id", flat=True)
    participants = Participant.objects.filter(
        experiment_id=version.experiment_id, site__mode=Site.Mode.HOSTED, site__is_active=True
    ).exclude(site_id__in=done)
    if not include_training:
        participants = participants.exclude(site_id__in=training)
    n = 0
    for p in participants.select_related("site"):
        evaluate_site.apply_async(args=[version_id, p.site_id], queue=p.site.queue)
        n += 1
    return n


# -- the sweeper (Celery beat) ------------------------------------------------------

@shared_task(name="aggregation.sweep", **RETRY)
def sweep() -> dict[str, int]:
    """Move on whatever a crash or a lost message left behind.

    Closes rounds past their deadline, re-queues aggregations and site work that went
    quiet for longer than ``FEDHEALTH_STALE_SECONDS``. Re-queuing is safe: the tasks
    are idempotent, so at worst a duplicate finds nothing to do.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS)
    counts = {"closed": 0, "aggregations": 0, "training": 0, "evaluations": 0}
    for round_id in Round.objects.filter(status=Round.Status.OPEN, deadline__lte=now).values_list("pk", flat=True):
        services.maybe_close_round(round_id, now=now)
        counts["closed"] += 1
    for round_id in Round.objects.filter(status=Round.Status.AGGREGATING, closed_at__lte=stale).values_list("pk", flat=True):
        counts["aggregations"] += queue_aggregation(round_id)
    stuck = ClientUpdate.objects.filter(
        round__status=Round.Status.OPEN, site__mode=Site.Mode.HOSTED,
    ).filter(
        Q(status=ClientUpdate.Status.PENDING, created_at__lte=stale)
        | Q(status=ClientUpdate.Status.TRAINING, started_at__lte=stale)
    ).select_related("site")
    for update in stuck:
        train_site.apply_async(args=[update.pk], queue=update.site.queue)
        counts["training"] += 1
    recent = ModelVersion.objects.filter(
        created_at__lte=stale, created_at__gte=now - timedelta(days=1),
        experiment__status__in=[*Experiment.ACTIVE, Experiment.Status.COMPLETED],
    )
    for version in recent:
        counts["evaluations"] += queue_evaluations(version.pk, include_training=True)
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts
