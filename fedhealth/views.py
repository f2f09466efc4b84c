from django.apps import apps
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone


def healthz(request):
    """Health for load balancers and docker-compose: the database, the broker (a
    connection check that gives up after FEDHEALTH_BROKER_TIMEOUT seconds) and how
    fresh the workers' heartbeats are. 503 when the database or the broker is
    unreachable: work could not be queued. Workers being away is reported, not a 503
    (the web process itself is fine); no queue names, which would name sites."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means "unhealthy", whatever the driver
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    broker = _broker_reachable()
    body = {
        "status": "ok" if broker else "error",
        "database": "ok",
        "broker": "ok" if broker else "unreachable",
        "workers": _heartbeats(),
    }
    return JsonResponse(body, status=200 if broker else 503)


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
