"""/metrics (Prometheus, behind a bearer token) and JSON log lines with request and
task ids."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings

from aggregation import services
from aggregation.models import ClientUpdate
from fedhealth.celery import app
from fedhealth.ops.logs import ContextFilter, JsonFormatter
from fedhealth.tasks import scheduled_backup

pytestmark = pytest.mark.django_db
TOKEN = "metrics-token-for-tests-0123456789"


def _scrape(client) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_metrics_are_closed_without_the_token(client, settings):
    settings.FEDHEALTH_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    settings.FEDHEALTH_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 401
    response = client.get("/metrics")
    assert (
        response["WWW-Authenticate"].startswith("Bearer") and b"fedhealth_" not in response.content
    )


def test_metrics_report_the_platform(
    client, settings, make_site, make_dataset, make_experiment, drive, tmp_path
):
    settings.FEDHEALTH_METRICS_TOKEN = TOKEN
    sites = [make_site(f"m-{i}") for i in range(2)]
    experiment = make_experiment(
        [make_dataset(s, rows=80, seed=i) for i, s in enumerate(sites)], num_rounds=2
    )
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    ClientUpdate.objects.filter(round__experiment=experiment, site=sites[1]).update(
        status="failed", error_code="no_worker"
    )
    queue = "site.m-0"
    with app.connection_for_write() as conn:
        before = conn.default_channel.queue_declare(queue=queue).message_count
    for _ in range(2):
        app.send_task("aggregation.sweep", queue=queue)
    client.get("/healthz")

    text = _scrape(client)
    assert 'fedhealth_experiments{status="completed"} 1.0' in text
    assert 'fedhealth_experiments{status="running"} 0.0' in text
    assert "fedhealth_round_duration_seconds_count 2.0" in text
    assert 'fedhealth_round_duration_seconds_bucket{le="+Inf"} 2.0' in text
    assert 'fedhealth_task_failures{code="no_worker",kind="update"} 2.0' in text
    assert f'fedhealth_queue_depth{{queue="{queue}"}} {before + 2}.0' in text
    assert 'fedhealth_queue_depth{queue="server"}' in text and "fedhealth_broker_up 1.0" in text
    assert 'fedhealth_http_requests_total{method="GET",status="2xx"}' in text
    assert "fedhealth_last_backup_age_seconds NaN" in text

    settings.FEDHEALTH_BACKUP_DIR = str(tmp_path / "backups")
    scheduled_backup.apply().get()
    age = next(
        float(line.split()[1])
        for line in _scrape(client).splitlines()
        if line.startswith("fedhealth_last_backup_age_seconds ")
    )
    assert 0 <= age < 60
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def test_metrics_say_when_the_broker_is_down(client, settings, monkeypatch):
    settings.FEDHEALTH_METRICS_TOKEN = TOKEN
    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setitem(app.conf, "broker_write_url", None)
    text = _scrape(client)
    assert "fedhealth_broker_up 0.0" in text and "fedhealth_queue_depth{" not in text


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())
        self.addFilter(ContextFilter())

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines():
    handler = _Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.lines
    root.removeHandler(handler)


def test_a_request_logs_with_its_request_id(client, json_lines):
    response = client.get("/no-such-page/", HTTP_X_REQUEST_ID="proxy-id-1234")
    assert response.status_code == 404 and response["X-Request-ID"] == "proxy-id-1234"
    events = [json.loads(line) for line in json_lines]
    assert any(
        e["logger"] == "django.request" and e["request_id"] == "proxy-id-1234" for e in events
    )
    # An id that is not one is replaced, never written into the logs.
    response = client.get("/healthz", HTTP_X_REQUEST_ID='x"\n{"level": "forged"}')
    assert len(response["X-Request-ID"]) == 32 and "forged" not in response["X-Request-ID"]
    # Cleared when the request is over: later lines of this thread carry none.
    logging.getLogger("fedhealth.test").warning("after the request")
    assert json.loads(json_lines[-1])["request_id"] is None


def test_a_task_logs_with_its_task_id(settings, tmp_path, json_lines):
    settings.FEDHEALTH_BACKUP_DIR = str(tmp_path / "backups")
    result = scheduled_backup.apply()
    events = [json.loads(line) for line in json_lines if "backup: wrote" in line]
    assert (
        len(events) == 1 and events[0]["task_id"] == result.id and events[0]["request_id"] is None
    )


def test_production_settings_log_one_json_line_per_event(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "DEBUG")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings",
        "ENV_FILE": "",
        "SECRET_KEY": "production-like-key-for-this-test-0123456789-abcdefghijkl",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('fedhealth.test').warning('two\\nlines')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=django_settings.BASE_DIR,
        check=True,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert (
        event["message"] == "two\nlines"
        and event["level"] == "WARNING"
        and event["logger"] == "fedhealth.test"
    )
