"""Record and verify the audit trail (audit/models.py says what the chain guarantees).

``record(kind, ...)`` is the one call the product's services and views make, one line each.
Who and from where default to the current request (audit/middleware.py keeps it in a
context variable), so a service called from a page, the API or the admin is attributed
without passing the request around; outside a request (a worker, a command) it is "system".
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from .models import AuditEvent, AuditHead

Kind = AuditEvent.Kind
GENESIS = "0" * 64
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("audit_request", default=None)


def _who(request: Any) -> tuple[int | None, str, Any]:
    """(user id, name, the principal's site or None) of whoever made ``request``."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None, "", None
    site = getattr(user, "site", None)  # a site token's principal (clients/api/authentication.py)
    if site is not None and not hasattr(user, "get_username"):
        return None, f"site token ({site.slug})", site
    membership = getattr(user, "membership", None) if _has_membership(user) else None
    return user.pk, user.get_username(), getattr(membership, "site", None)


def _has_membership(user: Any) -> bool:
    try:
        return user.membership is not None
    except Exception:  # RelatedObjectDoesNotExist: no membership (a coordinator, say)
        return False


def _address(request: Any) -> str | None:
    # REMOTE_ADDR only: forwarded-for headers are written by the client unless a trusted
    # proxy rewrites them, and an audit trail must not record what the caller claims.
    return (getattr(request, "META", None) or {}).get("REMOTE_ADDR") or None


def canonical(event: AuditEvent) -> bytes:
    """The bytes the event's hash covers: every field and the previous hash, as sorted
    compact JSON (the same on every database and Python version)."""
    body = {
        "seq": event.seq,
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "kind": event.kind,
        "actor_id": event.actor_id,
        "actor": event.actor,
        "site_id": event.site_id,
        "site_name": event.site_name,
        "client_address": event.client_address,
        "target": event.target,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def record(
    kind: str,
    *,
    target: str = "",
    details: dict[str, Any] | None = None,
    actor: Any = None,
    site: Any = None,
    request: Any = None,
) -> AuditEvent:
    """Append one event. ``actor``/``site`` override what the request says (a sign-in
    failure has no user; an upload's site is the dataset's). ``details`` must hold no
    patient data: counts and ids only."""
    request = request if request is not None else current_request.get()
    actor_id, actor_name, request_site = _who(request)
    if actor is not None:
        if isinstance(actor, str):
            actor_id, actor_name = None, actor
        else:
            actor_id, actor_name = getattr(actor, "pk", None), actor.get_username()
    site = site if site is not None else request_site
    event = AuditEvent(
        kind=str(kind),
        actor_id=actor_id,
        actor=actor_name[:200],
        site_id=getattr(site, "pk", None),
        site_name=(getattr(site, "name", "") or "")[:200],
        client_address=_address(request),
        target=target[:255],
        details=json.loads(json.dumps(details or {})),  # as the JSON column returns it
    )
    if transaction.get_connection().in_atomic_block:
        # Inside the caller's transaction: the event commits or rolls back with the change
        # it records.
        with transaction.atomic():
            _append([event])
        return event
    _group_commit(event)
    return event


# Group commit. Every append locks the head and commits; under concurrent traffic (one
# event per prediction request) that serialised every writer on one lock and one commit
# each. Outside a transaction, an event instead joins the events other threads of this
# process are waiting to append, and one of them (whoever holds ``_writer`` next) appends
# the whole group in one transaction: one head lock, one INSERT, one commit. Each caller
# still returns only once its own event is committed, so nothing is acknowledged before it
# is in the chain, and the chain stays linear (positions are assigned under the head lock).
@dataclass
class _Ticket:
    event: AuditEvent
    done: bool = False
    failed: bool = False


_pending: list[_Ticket] = []
_pending_lock = threading.Lock()
_writer = threading.Lock()
# Per process: how many groups the group path wrote and how many events they held.
group_stats = {"groups": 0, "events": 0}


def _group_commit(event: AuditEvent) -> None:
    ticket = _Ticket(event)
    with _pending_lock:
        _pending.append(ticket)
    with _writer:
        if not ticket.done:
            with _pending_lock:
                group = list(_pending)
                _pending.clear()
            try:
                with transaction.atomic():
                    _append([t.event for t in group])
            except BaseException:
                # The others append their own event alone (and see their own error);
                # this caller raises its own.
                for t in group:
                    t.done, t.failed = True, t is not ticket
                raise
            for t in group:
                t.done = True
            group_stats["groups"] += 1
            group_stats["events"] += len(group)
    if ticket.failed:
        with transaction.atomic():
            _append([event])


def _lock_head() -> tuple[int, str]:
    """Lock the head (its row lock on PostgreSQL; SQLite's write lock, which
    ``BEGIN IMMEDIATE`` already holds) and return its position and hash. Call inside a
    transaction."""
    connection = transaction.get_connection()
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    for _ in range(2):
        if connection.features.can_return_columns_from_insert:  # UPDATE ... RETURNING too
            with connection.cursor() as cursor:
                # A no-op UPDATE takes the lock before the head is read, so concurrent
                # writers queue here; RETURNING reads it in the same statement.
                cursor.execute(f"UPDATE {table} SET seq = seq WHERE id = 1 RETURNING seq, hash")
                row = cursor.fetchone()
        elif AuditHead.objects.filter(pk=1).update(seq=F("seq")):
            row = AuditHead.objects.filter(pk=1).values_list("seq", "hash").get()
        else:
            row = None
        if row is not None:
            return int(row[0]), row[1]
        AuditHead.objects.get_or_create(pk=1)
    raise RuntimeError("the audit head row could not be created")


def _append(events: list[AuditEvent]) -> None:
    """Chain ``events`` after the head, in order, and move the head. Inside a transaction."""
    seq, prev = _lock_head()
    for event in events:
        seq += 1
        event.pk = None  # a group that failed once is appended again
        event.seq, event.created_at, event.prev_hash = seq, timezone.now(), prev
        event.hash = prev = compute_hash(event)
    AuditEvent.objects.bulk_create(events)
    connection = transaction.get_connection()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(AuditHead._meta.db_table)} SET seq = %s, hash = %s WHERE id = 1",
            [seq, prev],
        )


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    problems: list[str]


def verify(batch: int = 2000) -> Verification:
    """Walk the chain in order: each event's hash must be its own, each must link to the
    one before, positions must run 1, 2, 3... and the last must be the head's."""
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for event in _in_order(batch):
        count += 1
        if event.seq != expected_seq:
            problems.append(f"events {expected_seq} to {event.seq - 1} are missing")
        if event.prev_hash != prev:
            problems.append(f"event {event.seq} does not link to the event before it")
        if compute_hash(event) != event.hash:
            problems.append(f"event {event.seq} was altered (its hash does not match its contents)")
        prev, expected_seq = event.hash, event.seq + 1
    head = AuditHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(
            f"the chain ends at event {expected_seq - 1} but the last recorded event is {head_seq}: "
            "events were removed from the end, or the head was altered"
        )
    return Verification(not problems, count, problems)


def _in_order(batch: int) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = list(AuditEvent.objects.filter(seq__gt=last).order_by("seq")[:batch])
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def visible_events(user) -> QuerySet[AuditEvent]:
    """A coordinator sees every event; a site admin their own site's; anyone else none."""
    from clients.permissions import is_coordinator, is_site_admin, site_of

    if is_coordinator(user):
        return AuditEvent.objects.all()
    if is_site_admin(user):
        return AuditEvent.objects.filter(site_id=site_of(user).pk)
    return AuditEvent.objects.none()
