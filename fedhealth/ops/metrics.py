"""Prometheus metrics at /metrics, for the hospital's monitoring (prometheus-client).

Two kinds:
- per web process, counted as requests pass (fedhealth/ops/middleware.py): requests by
  method and status class, and their durations. Under gunicorn with several workers set
  PROMETHEUS_MULTIPROC_DIR (an empty folder per start) so the processes' counts add up.
- read from the platform's state at each scrape, so every web process reports the same:
  experiments by status, round durations, failed work by kind and reason code (updates,
  rounds, evaluations: what tasks gave up on), queue depth per queue (from the broker),
  and the age of the last successful backup.

The endpoint is closed unless FEDHEALTH_METRICS_TOKEN is set, and then answers only a
request carrying it as a bearer token: queue names name sites.
"""

from __future__ import annotations

import hmac
import math
import os

from django.apps import apps
from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from .status import backup_age_seconds

REQUESTS = Counter("fedhealth_http_requests", "HTTP requests answered", ["method", "status"])
REQUEST_SECONDS = Histogram(
    "fedhealth_http_request_duration_seconds",
    "Time to answer a request",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Round durations: seconds from opening to completion (training, waiting, aggregation).
ROUND_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
# The newest completed rounds only: a scrape stays one small query on a long-lived instance.
ROUND_WINDOW = 1000


class PlatformCollector:
    """Metrics read from the database and the broker at scrape time."""

    def collect(self):
        experiment = apps.get_model("aggregation", "Experiment")
        rounds = apps.get_model("aggregation", "Round")
        update = apps.get_model("aggregation", "ClientUpdate")
        attempt = apps.get_model("aggregation", "EvaluationAttempt")

        by_status = dict(
            experiment.objects.values_list("status").annotate(n=Count("id")).order_by()
        )
        family = GaugeMetricFamily(
            "fedhealth_experiments", "Experiments by status", labels=["status"]
        )
        for status in experiment.Status.values:
            family.add_metric([status], by_status.get(status, 0))
        yield family

        durations = [
            (done - started).total_seconds()
            for started, done in rounds.objects.filter(completed_at__isnull=False)
            .order_by("-completed_at")
            .values_list("started_at", "completed_at")[:ROUND_WINDOW]
        ]
        buckets = []
        for bound in ROUND_BUCKETS:
            buckets.append((str(bound), sum(d <= bound for d in durations)))
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily(
            "fedhealth_round_duration_seconds",
            f"Durations of the last {ROUND_WINDOW} completed rounds",
            buckets=buckets,
            sum_value=sum(durations),
        )

        failures = GaugeMetricFamily(
            "fedhealth_task_failures",
            "Work the tasks gave up on, by kind and reason code",
            labels=["kind", "code"],
        )
        for kind, queryset, field in (
            ("update", update.objects.filter(status="failed"), "error_code"),
            ("round", rounds.objects.filter(status="failed"), "failure_code"),
            ("evaluation", attempt.objects.filter(status="failed"), "error_code"),
        ):
            for code, n in queryset.values_list(field).annotate(n=Count("id")).order_by():
                failures.add_metric([kind, code or "unknown"], n)
        yield failures

        depth = GaugeMetricFamily(
            "fedhealth_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        broker_up = GaugeMetricFamily(
            "fedhealth_broker_up", "1 when the broker answered this scrape"
        )
        counts = queue_depths(self._queues())
        for queue, n in sorted((counts or {}).items()):
            depth.add_metric([queue], n)
        broker_up.add_metric([], 1 if counts is not None else 0)
        yield depth
        yield broker_up

        age = backup_age_seconds()
        yield GaugeMetricFamily(
            "fedhealth_last_backup_age_seconds",
            "Seconds since the last successful backup (NaN: none yet)",
            value=math.nan if age is None else age,
        )

    @staticmethod
    def _queues() -> list[str]:
        site = apps.get_model("clients", "Site")
        slugs = site.objects.filter(is_active=True, mode="hosted").values_list("slug", flat=True)
        return [settings.FEDHEALTH_SERVER_QUEUE] + [f"site.{slug}" for slug in slugs]


def queue_depths(queues: list[str]) -> dict[str, int] | None:
    """Messages waiting in each queue, or None when the broker does not answer."""
    from fedhealth.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.FEDHEALTH_BROKER_TIMEOUT)
            channel = conn.default_channel
            out = {}
            for queue in queues:
                try:
                    out[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # a queue nobody declared yet holds nothing
                    out[queue] = 0
            return out
    except Exception:  # any transport failure: the broker is down for this scrape
        return None


REGISTRY = CollectorRegistry()
REGISTRY.register(PlatformCollector())


def _registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import REGISTRY as process_registry

        class _Both:
            def collect(self):
                yield from process_registry.collect()
                yield from REGISTRY.collect()

        return _Both()  # type: ignore[return-value]
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(PlatformCollector())
    return registry


@never_cache
@require_GET
def metrics(request):
    token = settings.FEDHEALTH_METRICS_TOKEN
    if not token:
        raise Http404("metrics are off (FEDHEALTH_METRICS_TOKEN is not set)")
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        response = HttpResponse(
            "a bearer token is required\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
