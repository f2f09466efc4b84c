from django.apps import apps
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone


def healthz(request):
    """Liveness: 200 whenever this process can answer, so a restart policy never
    restarts web processes during a Redis or database outage that a restart cannot fix.

    The body still says what is wrong, so an outage is never invisible: the database,
    the broker (a connection check that gives up after FEDHEALTH_BROKER_TIMEOUT
    seconds) and how fresh the workers' heartbeats are ("degraded" when the database
    or the broker is unreachable). /readyz answers 503 for those (fedhealth/ops/ready.py).
    No queue names: they would name sites."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure, whatever the driver
        return JsonResponse({"status": "degraded", "database": "unavailable"})
    broker = _broker_reachable()
    return JsonResponse({
        "status": "ok" if broker else "degraded",
        "database": "ok",
        "broker": "ok" if broker else "unreachable",
        "workers": _heartbeats(),
    })


def _broker_reachable() -> bool:
    from .celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.FEDHEALTH_BROKER_TIMEOUT)
    except Exception:  # kombu wraps most, but a transport may raise its own
        return False
    return True


def _heartbeats() -> dict:
    # Read through the app registry: the project package does not import its apps.
    heartbeat = apps.get_model("aggregation", "WorkerHeartbeat")
    now = timezone.now()
    ages = [(now - seen).total_seconds() for seen in heartbeat.objects.values_list("seen_at", flat=True)]
    live = sum(age <= settings.FEDHEALTH_HEARTBEAT_LIVE_SECONDS for age in ages)
    return {
        "queues_attended": live,
        "queues_unattended": len(ages) - live,
        "freshest_heartbeat_seconds": round(min(ages), 1) if ages else None,
    }
