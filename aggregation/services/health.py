"""Which queues have a live worker, and which sites' work nobody is taking.

Workers write a ``WorkerHeartbeat`` per queue they consume while they are connected to
the broker (``aggregation.heartbeat``). A queue is attended while its latest heartbeat
is younger than ``FEDHEALTH_HEARTBEAT_LIVE_SECONDS``. A hosted site whose open work sits
on an unattended queue is shown as such ("no worker has taken ... for N minutes")
instead of a silent countdown, and at the deadline its update fails as NO_WORKER, not
as a site that missed the deadline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from clients.models import Site

from ..models import ClientUpdate, Experiment, Round, WorkerHeartbeat

OPEN_WORK = (ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING)


def live_window() -> timedelta:
    return timedelta(seconds=settings.FEDHEALTH_HEARTBEAT_LIVE_SECONDS)


def record_heartbeat(queues: Iterable[str], hostname: str, *, now: datetime | None = None) -> None:
    """A worker consuming ``queues`` is alive and connected to the broker now."""
    now = now or timezone.now()
    for queue in queues:
        WorkerHeartbeat.objects.update_or_create(queue=queue, defaults={"hostname": hostname, "seen_at": now})


def last_seen(queues: Iterable[str]) -> dict[str, datetime]:
    """The latest heartbeat of each queue that ever had one."""
    return dict(WorkerHeartbeat.objects.filter(queue__in=list(queues)).values_list("queue", "seen_at"))


def attended(queues: Iterable[str], *, at: datetime | None = None) -> set[str]:
    """The queues with a worker alive around ``at`` (default: now)."""
    at = at or timezone.now()
    return {q for q, seen in last_seen(queues).items() if seen >= at - live_window()}


@dataclass(frozen=True)
class Unattended:
    """A hosted site with open work in a round and no live worker on its queue."""

    site: Site
    round: Round
    since: datetime  # the later of the work's creation and the queue's last heartbeat
    seconds: float

    @property
    def notice(self) -> str:
        return f"No worker has taken {self.site.name}'s work for {_duration(self.seconds)}."


def unattended_sites(experiment: Experiment, sites: Iterable[Site], *, now: datetime | None = None) -> list[Unattended]:
    """Among ``sites`` (the viewer's visible ones), those whose open work in the
    experiment's current round has had no live worker for at least the live window
    (so a round that has just opened is not flagged before any worker could answer)."""
    now = now or timezone.now()
    round_ = experiment.rounds.filter(status=Round.Status.OPEN).order_by("-number").first()
    if round_ is None or experiment.status != Experiment.Status.RUNNING:
        return []
    waiting = list(
        round_.updates.filter(status__in=OPEN_WORK, site__mode=Site.Mode.HOSTED, site__in=list(sites))
        .select_related("site").order_by("site__name")
    )
    seen = last_seen(u.site.queue for u in waiting)
    found = []
    for u in waiting:
        since = max(u.created_at, seen.get(u.site.queue, u.created_at))
        quiet = (now - since).total_seconds()
        if quiet >= live_window().total_seconds():
            found.append(Unattended(site=u.site, round=round_, since=since, seconds=quiet))
    return found


def worker_notices(experiments: Iterable[Experiment], sites: Iterable[Site], *, named: bool = False) -> list[str]:
    """The "no worker" messages for these experiments, about ``sites`` only (the
    viewer's visible sites); ``named`` prefixes each with its experiment and round."""
    sites = list(sites)
    notices: list[str] = []
    for experiment in experiments:
        for u in unattended_sites(experiment, sites):
            notices.append(f"{experiment.name}, round {u.round.number}: {u.notice}" if named else u.notice)
    return notices


def no_worker_at_deadline(round_: Round, updates: Iterable[ClientUpdate]) -> set[int]:
    """Of a round's open updates at its deadline, the hosted sites' ones whose queue
    had no live worker then (they fail as NO_WORKER, not MISSED_DEADLINE)."""
    hosted = [u for u in updates if u.site.mode == Site.Mode.HOSTED]
    live = attended((u.site.queue for u in hosted), at=round_.deadline)
    return {u.pk for u in hosted if u.site.queue not in live}


def _duration(seconds: float) -> str:
    if seconds < 90:
        n, unit = round(seconds), "second"
    elif seconds < 2 * 3600:
        n, unit = round(seconds / 60), "minute"
    else:
        n, unit = round(seconds / 3600), "hour"
    return f"{n} {unit}{'' if n == 1 else 's'}"
