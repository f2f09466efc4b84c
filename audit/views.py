"""The audit trail's page and exports: a coordinator sees every event, a site admin their own
site's (audit.services.visible_events); filter by person, kind and date; CSV and JSON."""

from __future__ import annotations

import io
import json
from datetime import date, datetime, time
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from clients.permissions import is_coordinator, is_site_admin
from fedhealth import csvsafe

from .models import AuditEvent
from .services import visible_events

PAGE_SIZE = 50
COLUMNS = ["seq", "created_at", "kind", "actor", "site_name", "client_address", "target", "details", "hash"]


def _allowed(user) -> None:
    if not (is_coordinator(user) or is_site_admin(user)):
        raise PermissionDenied("Only coordinators and site admins see the audit trail.")


def _day(value: str, field: str, errors: dict[str, str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[field] = f"{field} must be a date as YYYY-MM-DD, not {value!r}"
        return None


def filtered(request) -> tuple[QuerySet[AuditEvent], dict[str, str], dict[str, str]]:
    """The viewer's events under the query's filters, the filters, and errors naming the field."""
    params = {k: request.GET.get(k, "").strip() for k in ("person", "kind", "since", "until")}
    errors: dict[str, str] = {}
    events = visible_events(request.user)
    if params["person"]:
        events = events.filter(actor__iexact=params["person"])
    if params["kind"]:
        if params["kind"] not in AuditEvent.Kind.values:
            errors["kind"] = f"kind must be one of {', '.join(AuditEvent.Kind.values)}, not {params['kind']!r}"
        else:
            events = events.filter(kind=params["kind"])
    tz = timezone.get_current_timezone()
    since, until = _day(params["since"], "since", errors), _day(params["until"], "until", errors)
    if since:
        events = events.filter(created_at__gte=timezone.make_aware(datetime.combine(since, time.min), tz))
    if until:
        events = events.filter(created_at__lte=timezone.make_aware(datetime.combine(until, time.max), tz))
    return events.order_by("-seq"), params, errors


@login_required
def audit_list(request):
    _allowed(request.user)
    events, params, errors = filtered(request)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in params.items() if v})
    return render(request, "audit/events.html", {
        "page": page, "params": params, "errors": errors, "kinds": AuditEvent.Kind.choices, "query": query,
        "people": visible_events(request.user).exclude(actor="").values_list("actor", flat=True)
        .distinct().order_by("actor")[:500],
    }, status=400 if errors else 200)


def _row(event: AuditEvent) -> dict:
    return {
        "seq": event.seq, "created_at": event.created_at.isoformat(), "kind": event.kind, "actor": event.actor,
        "site_name": event.site_name, "client_address": event.client_address, "target": event.target,
        "details": event.details, "hash": event.hash,
    }


@login_required
def audit_export(request, fmt: str):
    _allowed(request.user)
    events, _, errors = filtered(request)
    if errors:
        return HttpResponse("; ".join(errors.values()), status=400, content_type="text/plain")
    rows = (_row(e) for e in events.iterator(chunk_size=2000))
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    if fmt == "json":
        response = HttpResponse(json.dumps(list(rows), indent=1), content_type="application/json")
    else:
        out = io.StringIO()
        writer = csvsafe.writer(out)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([json.dumps(row[c], sort_keys=True) if c == "details" else row[c] for c in COLUMNS])
        response = HttpResponse(out.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response
