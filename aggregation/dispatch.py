"""What runs next, and on which queue.

Services decide *that* work is due and call these producers with
``transaction.on_commit(...)``, so a message never names a row that is not committed;
the tasks (aggregation/tasks.py) do the work. Services never import the tasks: this
module imports them lazily, at send time.

Site work goes to the site's own queue (``site.<slug>``), aggregation to the server
queue. A broker that cannot be reached is not an error of the caller: the state change
is committed already, the message is logged and counted as unsent (see ``report``),
and the sweeper sends the work once the broker is back. Producers stop at the first
broker failure in a batch rather than waiting out the timeout once per site.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from clients.models import Site

from .models import (
    ClientUpdate,
    EvaluationAttempt,
    ModelVersion,
    Participant,
    Round,
    SiteEvaluation,
)

log = logging.getLogger(__name__)

# kombu wraps a refused or timed-out connection in its OperationalError; a transport
# that writes files (the filesystem broker) raises OSError.
BROKER_ERRORS = (BrokerError, OSError)

UNSENT_NOTICE = (
    "The message broker could not be reached, so this work is not queued yet; "
    "it is sent automatically once the broker is reachable again."
)


@dataclass
class Report:
    """What the producers called inside ``report()`` sent and could not send."""

    sent: int = 0
    unsent: int = 0

    @property
    def notice(self) -> str:
        """A message for the person who asked, empty when everything was queued."""
        return UNSENT_NOTICE if self.unsent else ""


_report: ContextVar[Report | None] = ContextVar("dispatch_report", default=None)


@contextlib.contextmanager
def report() -> Iterator[Report]:
    """Count what is sent inside the block, on-commit producers included, so a view
    can tell its user that work is waiting for the broker."""
    current = Report()
    token = _report.set(current)
    try:
        yield current
    finally:
        _report.reset(token)


def _send(task_name: str, args: list, queue: str) -> bool:
    from . import tasks  # lazily: tasks import services, services import this module

    task = getattr(tasks, task_name)
    current = _report.get()
    try:
        task.apply_async(args=args, queue=queue)
    except BROKER_ERRORS:
        log.exception("could not send %s%s to %s; the sweeper will send it", task_name, args, queue)
        if current is not None:
            current.unsent += 1
        return False
    if current is not None:
        current.sent += 1
    return True


def _send_all(task_name: str, jobs: Iterable[tuple[list, str]]) -> int:
    jobs = list(jobs)
    sent = 0
    for i, (args, queue) in enumerate(jobs):
        if not _send(task_name, args, queue):
            current = _report.get()
            if current is not None:
                current.unsent += len(jobs) - i - 1
            break
        sent += 1
    return sent


# -- local training at a site -------------------------------------------------------

def queue_training(updates: Iterable[ClientUpdate]) -> int:
    """Send these updates (with ``site`` loaded) to their sites' queues."""
    return _send_all("train_site", (([u.pk], u.site.queue) for u in updates))


def queue_round_training(round_id: int) -> int:
    """Send each hosted site's open update of a round to that site's queue."""
    updates = ClientUpdate.objects.filter(
        round_id=round_id, round__status=Round.Status.OPEN,
        status__in=[ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING],
        site__mode=Site.Mode.HOSTED,
    ).select_related("site")
    return queue_training(updates)


# -- aggregation on the server --------------------------------------------------------

def queue_aggregation(round_id: int) -> bool:
    if not Round.objects.filter(pk=round_id, status=Round.Status.AGGREGATING).exists():
        return False
    return _send("aggregate_round", [round_id], settings.FEDHEALTH_SERVER_QUEUE)


# -- secure aggregation: each hosted site's step of the open phase ----------------------

def queue_secure_phase(round_id: int) -> int:
    """Send the open phase's step to each hosted site still owing it (all of them once the
    protocol is over: each then deletes its secrets). Safe to repeat: steps are idempotent."""
    from .models import SecureRound, SecureSite

    secure = SecureRound.objects.filter(round_id=round_id).first()
    if secure is None:
        return 0
    places = SecureSite.objects.filter(secure_round=secure, site__mode=Site.Mode.HOSTED).select_related("site")
    if secure.phase not in (SecureRound.Phase.DONE, SecureRound.Phase.FAILED):
        places = places.filter(status=SecureSite.Status.ACTIVE).exclude(last_phase=secure.phase)
    return _send_all("secure_site_step", (([round_id, p.site_id], p.site.queue) for p in places))


# -- federated evaluation at each site -------------------------------------------------

def queue_evaluations(version_id: int, *, include_training: bool = False, quiet_since: datetime | None = None) -> int:
    """Ask every hosted participant that has not yet evaluated a version to do so.

    Sites training in the next round evaluate the version at the start of that task
    (they hold it already), so they are skipped unless ``include_training``: the
    sweeper sets it when such an evaluation went missing. An evaluation given up
    (``EvaluationAttempt`` failed) is never sent again; with ``quiet_since`` (the
    sweeper), neither is one sent or tried after that time.
    """
    version = ModelVersion.objects.get(pk=version_id)
    done = SiteEvaluation.objects.filter(version=version).values_list("site_id", flat=True)
    given_up = EvaluationAttempt.objects.filter(
        version=version, status=EvaluationAttempt.Status.FAILED
    ).values_list("site_id", flat=True)
    # Only sites whose consent stands evaluate: evaluating reads the site's rows too.
    participants = Participant.objects.filter(
        experiment_id=version.experiment_id, site__mode=Site.Mode.HOSTED, site__is_active=True,
        consent=Participant.Consent.ACCEPTED, dataset__withdrawn_at__isnull=True,
    ).exclude(site_id__in=done).exclude(site_id__in=given_up)
    if not include_training:
        training = ClientUpdate.objects.filter(
            round__experiment_id=version.experiment_id, round__number=version.version + 1,
            status__in=[ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING],
        ).values_list("site_id", flat=True)
        participants = participants.exclude(site_id__in=training)
    if quiet_since is not None:
        recent = EvaluationAttempt.objects.filter(version=version, updated_at__gt=quiet_since)
        participants = participants.exclude(site_id__in=recent.values_list("site_id", flat=True))
    sites = [p.site for p in participants.select_related("site")]
    # The attempt row's updated_at records when the evaluation was last sent, so the
    # sweeper re-sends it once per quiet period rather than at every sweep.
    now = timezone.now()
    for site in sites:
        attempt, created = EvaluationAttempt.objects.get_or_create(version=version, site=site)
        if not created:
            EvaluationAttempt.objects.filter(pk=attempt.pk).update(updated_at=now)
    return _send_all("evaluate_site", (([version_id, s.pk], s.queue) for s in sites))


# -- the end of an experiment: alone / global / personalised at each hosted site --------

def queue_site_comparisons(experiment_id: int, only: Iterable[int] | None = None) -> int:
    """Send each hosted site's pending (or interrupted) comparison to its own queue
    (``only``: just these rows). Safe to repeat: the task claims its row first
    (site_comparison.begin_comparison)."""
    from .models import SiteComparison

    rows = SiteComparison.objects.filter(
        participant__experiment_id=experiment_id, source=SiteComparison.Source.HOSTED,
        status__in=[SiteComparison.Status.PENDING, SiteComparison.Status.RUNNING],
        participant__site__is_active=True,
    ).select_related("participant__site")
    if only is not None:
        rows = rows.filter(pk__in=list(only))
    return _send_all("compare_site", (([c.pk], c.participant.site.queue) for c in rows))
