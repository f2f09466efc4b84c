"""docker-compose.yml, the Procfile and .env.example point at things that exist.

No Docker engine runs here, so the compose file is checked by parsing it and
resolving every module, command and setting it names.
"""

import importlib
import re
import shlex
from pathlib import Path

import environ
import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_whole_stack_with_healthchecks(compose):
    services = compose["services"]
    assert {"web", "worker", "beat", "redis", "postgres"} <= set(services)
    for name in ("web", "worker", "redis", "postgres"):
        assert "healthcheck" in services[name], name
    assert "media" in compose["volumes"]
    assert any(v.startswith("media:") for v in services["web"]["volumes"])
    for name in ("web", "worker", "beat"):
        assert services[name]["env_file"] == ".env"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_health_checks_use_readyz(compose):
    from django.urls import resolve

    web = compose["services"]["web"]["healthcheck"]["test"]
    url = re.search(r"urlopen\('http://127\.0\.0\.1:8000(/\w+)'", " ".join(web)).group(1)
    assert url == "/readyz" and resolve(url).url_name == "readyz"
    assert resolve("/healthz").url_name == "healthz"
    # Scheduled backups: beat knows the folder, the worker (server queue) writes there.
    assert compose["x-app"]["environment"]["FEDHEALTH_BACKUP_DIR"] == "/app/var/backups"
    assert "backups:/app/var/backups" in compose["services"]["worker"]["volumes"] and "backups" in compose["volumes"]
    # Workers and beat start once web is ready, i.e. after its migrations ran.
    for name in ("worker", "beat"):
        assert compose["services"][name]["depends_on"]["web"]["condition"] == "service_healthy"


def test_compose_commands_resolve(compose):
    services = compose["services"]
    web = services["web"]["command"]
    target = re.search(r"gunicorn (\S+)", web).group(1)
    module, attr = target.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert "manage.py migrate" in web

    worker = shlex.split(services["worker"]["command"])
    assert worker[:3] == ["python", "manage.py", "worker"]
    assert "worker" in get_commands()

    beat = shlex.split(services["beat"]["command"])
    assert beat[:4] == ["celery", "-A", "fedhealth", "beat"]
    from fedhealth.celery import app

    app.loader.import_default_modules()
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks


def test_compose_environment_parses(compose):
    env = compose["x-app"]["environment"]
    db = environ.Env.db_url_config(env["DATABASE_URL"])
    assert db["ENGINE"] == "django.db.backends.postgresql" and db["HOST"] == "postgres"
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:")


def test_procfile_commands_exist():
    commands = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(commands) == {"web", "worker"}
    for command in commands.values():
        argv = shlex.split(command)
        assert argv[1] == "manage.py" and argv[2] in get_commands()


def test_env_example_documents_every_setting():
    settings_src = (ROOT / "fedhealth" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_src))
    documented = set(re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read, "settings should read the environment"
    assert read - documented == set()


@pytest.mark.django_db
def test_healthz(client):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == body["database"] == body["broker"] == "ok"
    assert body["workers"] == {"queues_attended": 0, "queues_unattended": 0, "freshest_heartbeat_seconds": None}
