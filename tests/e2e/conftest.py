"""The real product for browser tests: gunicorn (production settings, collected static
files served by whitenoise, DEBUG off), a Celery worker on Redis, and Debian's Chromium
driven by Playwright. Never a downloaded browser: CI installs the `chromium` package.
"""

from __future__ import annotations

import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support import (
    REDIS_URL,
    Process,
    free_port,
    manage,
    process_env,
    wait_until,
    web_server,
    worker,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "e2e-Passphrase-2024"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Product:
    url: str
    processes: list[Process]

    def logs(self) -> str:
        return "\n".join(p.logs() for p in self.processes)


@pytest.fixture
def people(settings, make_site, make_user, make_dataset):
    """Two hosted sites (one already holding data), a member of the other, a coordinator."""
    # gunicorn runs the production settings, whose hashers do not include the test
    # suite's fast MD5 one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    st_marys = make_site("st-marys", name="St Mary's Hospital")
    riverside = make_site("riverside", name="Riverside Clinic")
    # Large enough that a round takes a few seconds: the page is seen moving.
    make_dataset(riverside, rows=3000, seed=21)
    users = {"mary": make_user("mary", st_marys), "carol": make_user("carol")}
    users["carol"].is_staff = True  # the header then holds the Admin item too
    for user in users.values():
        user.set_password(PASSWORD)
        user.save()
    return users


@pytest.fixture
def product(people, settings, tmp_path, monkeypatch):
    # Playwright's sync API drives an event loop in this thread, which Django's ORM
    # mistakes for async code; the test's own ORM calls are ordinary synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    env = process_env(
        settings.MEDIA_ROOT,
        CELERY_BROKER_URL=REDIS_URL,
        FEDHEALTH_POLL_MS="300",
    )
    # The web server runs as in production: DEBUG off, collected (hashed, compressed)
    # static files served by whitenoise, the Content-Security-Policy on. Plain HTTP on
    # 127.0.0.1, hence no secure cookies and no redirect to HTTPS.
    web_env = env | {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings",
        "SECRET_KEY": "e2e-only-secret-key-0123456789abcdef-0123456789abcdef",
        "DEBUG": "0",
        "STATIC_ROOT": str(tmp_path / "static"),
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "SECURE_SSL_REDIRECT": "0",
    }
    manage(web_env, "collectstatic", "--no-input", "-v0")
    port = free_port()
    processes = [web_server(web_env, tmp_path, port).start(), worker(env, tmp_path).start()]
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(url), timeout=60, what="the web server", watch=processes)
    yield Product(url, processes)
    for p in processes:
        p.kill()
    broker.flushdb()
    _wait_for_disconnects()


def _wait_for_disconnects() -> None:
    """PostgreSQL ends a killed client's session a moment later; dropping the test
    database before then fails."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return

    def alone() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
            return cursor.fetchone()[0] == 0

    try:
        wait_until(alone, timeout=30, what="the servers' database sessions to end")
    except BaseException:
        # Name the sessions that stayed: their last query and age say which code holds them.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid, application_name, client_port, backend_start, state, left(query, 200) "
                           "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            print("sessions still open:", *cursor.fetchall(), sep="\n  ")
        raise


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shoot():
    """Save a screenshot of the page, as a test artefact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


def csv_bytes(rows: int, seed: int) -> bytes:
    from fedhealth.ml.synthetic import generate_site

    out = io.StringIO()
    generate_site(rows, seed=seed).to_csv(out, index=False)
    return out.getvalue().encode()


def query(fn):
    """Run ORM code from a test that drives the browser, then close its connection.

    While Playwright's sync API is active, the test body gets its own database
    connection (Django keeps connections per asyncio context); left open, it would
    keep the test database from being dropped.
    """
    from django.db import connections

    try:
        return fn()
    finally:
        connections.close_all()
