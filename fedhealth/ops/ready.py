"""/readyz: may this process take traffic? Database, migrations, broker and storage.

/healthz (fedhealth/views.py) answers for the process and its workers; /readyz answers
for what a request needs. Each dependency is checked with a bounded wait and reported
by name, so a 503 says which one is down: an orchestrator keeps traffic away until
every one is back.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)
# A name no file has: existence checks cost one HEAD (S3) or stat (disk).
PROBE_NAME = "ops/readyz-probe"
PROBE_THREAD = "readyz-storage-probe"


def check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return None


def check_migrations() -> str | None:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return f"{len(plan)} migrations not applied" if plan else None


def check_broker() -> str | None:
    from fedhealth.views import _broker_reachable  # /healthz's check, same timeout

    return None if _broker_reachable() else "unreachable"


def check_storage() -> str | None:
    # S3 clients retry with back-off for a long while; a thread bounds the wait.
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            default_storage.exists(PROBE_NAME)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported as "unreachable", logged
            outcome.append(exc)

    worker = threading.Thread(target=probe, name=PROBE_THREAD, daemon=True)
    worker.start()
    worker.join(settings.FEDHEALTH_READYZ_TIMEOUT)
    if not outcome:
        return f"no answer within {settings.FEDHEALTH_READYZ_TIMEOUT:g} s"
    if outcome[0] is not None:
        logger.warning("readyz: storage check failed: %r", outcome[0])
        return "unreachable"
    return None


CHECKS = {
    "database": check_database,
    "migrations": check_migrations,
    "broker": check_broker,
    "storage": check_storage,
}


@never_cache
@require_GET
def readyz(request):
    """200 when every dependency answers; 503 naming each one that does not."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        if name == "migrations" and results.get("database") != "ok":
            results[name] = "not checked (database down)"
            continue
        try:
            problem = check()
        except Exception as exc:  # any failure of a dependency means "not ready"
            logger.warning("readyz: %s check failed: %r", name, exc)
            problem = "unreachable"
        results[name] = problem or "ok"
    down = [name for name, result in results.items() if result != "ok"]
    body = {"status": "not ready" if down else "ready", "down": down, "checks": results}
    return JsonResponse(body, status=503 if down else 200)
