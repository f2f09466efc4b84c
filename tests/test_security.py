"""The small security fixes of issue 8: the production key, HSTS and CSP, the limit on
failed token authentications, names in charts and formula cells in CSV files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from aggregation.services import artifacts
from aggregation.views import charts
from clients.models import ApiToken
from clients.tests import conftest as web
from fedhealth import csvsafe
from fedhealth.settings import secret_key_problem

ROOT = Path(__file__).resolve().parents[1]
EVIL_LINK = '<a href="https://evil.example">x</a>'
FORMULA = '=HYPERLINK("https://evil.example","x")'
SITES = "/api/v1/sites/"
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world


def fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Django, DEBUG or key setting, and no .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PYTEST", "DATABASE_URL"))
        and k not in ("DEBUG", "SECRET_KEY")
    }
    return env | {"ENV_FILE": ""} | extra


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=fresh_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def strong_key() -> str:
    return secrets.token_urlsafe(50)


# -- SECRET_KEY --------------------------------------------------------------------


def example_secret_key() -> str:
    [line] = [
        ln
        for ln in (ROOT / ".env.example").read_text().splitlines()
        if ln.startswith("SECRET_KEY=")
    ]
    return line.partition("=")[2]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "   ",
        "django-insecure-" + "x" * 60,
        "dev-only-insecure-key-change-me",
        "a" * 49,
        "ab" * 30,
    ],
)
def test_weak_keys_are_named_as_such(key):
    assert secret_key_problem(key) is not None


def test_a_random_key_is_accepted_and_the_example_key_is_not():
    assert secret_key_problem(strong_key()) is None
    assert secret_key_problem(example_secret_key()) is not None


@pytest.mark.parametrize("key", ["", "short-key", "django-insecure-" + "k3y" * 20, "<example>"])
def test_outside_debug_a_weak_key_stops_start_up_with_how_to_make_one(key):
    key = example_secret_key() if key == "<example>" else key

    out = manage("check", DEBUG="0", SECRET_KEY=key)

    assert out.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY" in out.stderr
    assert "secrets.token_urlsafe(50)" in out.stderr


def test_debug_runs_without_a_key():
    out = manage("check", DEBUG="1")

    assert out.returncode == 0, out.stderr


def test_check_deploy_is_clean_for_the_production_settings():
    out = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY=strong_key(),
        ALLOWED_HOSTS="fedhealth.example.org",
    )

    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout + out.stderr


# -- HSTS, HTTPS, CSP ------------------------------------------------------------------


@pytest.mark.django_db
def test_https_responses_carry_hsts_and_a_strict_policy(client, settings):
    response = client.get(reverse("login"), secure=True)

    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE


@pytest.mark.django_db
def test_plain_http_is_redirected_except_the_health_check(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # the production default (off in the test settings)

    page = client.get(reverse("login"))
    health = client.get("/healthz")

    assert page.status_code == 301 and page["Location"].startswith("https://")
    assert health.status_code == 200


@pytest.mark.django_db
def test_chart_pages_sign_plotlys_style_elements_with_the_responses_nonce(client, world):
    client.force_login(world.charlie)

    response = client.get(reverse("experiment_detail", args=[world.shared.pk]))

    [nonce] = set(re.findall(r"'nonce-([^']+)'", response["Content-Security-Policy"]))
    page = response.content.decode()
    assert page.count('<style id="plotly.js-style-') == 1
    assert page.count(f'nonce="{nonce}"') == 2
    assert re.search(r"<script>|<style>| style=\"| on[a-z]+=\"", page) is None


# -- failed token authentications ------------------------------------------------------


@pytest.fixture
def limit(settings):
    from django.core.cache import cache

    cache.clear()
    settings.FEDHEALTH_API_AUTH_FAILURES = 3
    settings.FEDHEALTH_API_AUTH_WINDOW_SECONDS = 60
    yield settings
    cache.clear()


def call(token: str, address: str, **headers: str):
    client = APIClient(REMOTE_ADDR=address)
    return client.get(SITES, HTTP_AUTHORIZATION=f"Bearer {token}", **headers)


@pytest.mark.django_db
def test_failures_from_one_address_are_throttled_without_locking_out_others(limit, alice):
    _, good = ApiToken.issue(user=alice)
    bad = good[:-4] + "AAAA"

    assert [call(bad, "203.0.113.7").status_code for _ in range(3)] == [401, 401, 401]
    throttled = call(bad, "203.0.113.7")
    # The real holder, elsewhere, is not affected; the guessing address is refused even
    # with a right token, before any token is looked at.
    elsewhere = call(good, "198.51.100.20")
    same_address = call(good, "203.0.113.7")

    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert throttled.json()["code"] == "throttled"
    assert elsewhere.status_code == 200
    assert same_address.status_code == 429


@pytest.mark.django_db
def test_successes_do_not_count_and_do_not_reset_the_count(limit, alice):
    _, good = ApiToken.issue(user=alice)

    assert all(call(good, "192.0.2.1").status_code == 200 for _ in range(5))
    statuses = []
    for _ in range(3):
        statuses.append(call("fhp_00000000_guess", "192.0.2.1").status_code)
        statuses.append(call(good, "192.0.2.1").status_code)  # a valid token between guesses

    assert statuses == [401, 200, 401, 200, 401, 429]


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_is_no_new_address(limit):
    statuses = [
        call("fhp_00000000_guess", "192.0.2.9", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").status_code
        for i in range(5)
    ]

    assert statuses == [401, 401, 401, 429, 429]


@pytest.mark.django_db
def test_the_address_may_try_again_once_the_window_has_passed(limit, alice):
    limit.FEDHEALTH_API_AUTH_WINDOW_SECONDS = 1
    _, good = ApiToken.issue(user=alice)
    for _ in range(3):
        call("fhp_00000000_guess", "192.0.2.5")
    assert call(good, "192.0.2.5").status_code == 429

    time.sleep(1.2)

    assert call(good, "192.0.2.5").status_code == 200


# -- names in charts ------------------------------------------------------------------------


def test_plain_shows_html_as_text_for_plotly():
    assert charts.plain(EVIL_LINK) == '&lt;a href="https://evil.example"&gt;x&lt;/a&gt;'
    assert charts.plain("St Mary's & Co") == "St Mary's &amp; Co"


@pytest.mark.django_db
def test_a_site_named_with_a_link_is_text_in_every_figure(client, world):
    world.site_a.name = EVIL_LINK
    world.site_a.save()
    client.force_login(world.charlie)

    live = client.get(reverse("experiment_live", args=[world.shared.pk])).json()
    models = client.get(
        reverse("model_list", args=[world.shared.pk]), {"version": world.version.version}
    )

    escaped = charts.plain(EVIL_LINK)
    bars = live["figures"]["sites"]["accuracy"]["data"][0]["x"]
    assert escaped in bars and EVIL_LINK not in json.dumps(live["figures"])
    analytics = json.loads(
        re.search(
            r'id="analytics-data" type="application/json">(.*?)</script>',
            models.content.decode(),
            re.S,
        ).group(1)
    )
    assert escaped in [trace["name"] for trace in analytics["figures"]["roc"]["data"]]
    assert EVIL_LINK not in json.dumps(analytics["figures"])


# -- formula cells in CSV files ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (FORMULA, "'" + FORMULA),
        ("+1+cmd", "'+1+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("plain", "plain"),
        ("", ""),
        ("-5", "-5"),
        ("+1.5e3", "+1.5e3"),
        (-0.25, -0.25),
        (-3, -3),
        (None, None),
    ],
)
def test_safe_cell_neutralises_formula_text_only(value, written):
    assert csvsafe.safe_cell(value) == written


def test_the_writer_writes_negative_numbers_as_numbers():
    out = io.StringIO()
    csvsafe.writer(out).writerow([-0.5, "-0.5", "=1+1"])

    assert out.getvalue() == "-0.5,-0.5,'=1+1\r\n"


def rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


def cells(response) -> list[str]:
    return [cell for row in rows(response) for cell in row]


@pytest.mark.django_db
def test_the_prediction_download_neutralises_formulas_from_the_uploaded_file(client, world):
    client.force_login(world.bob)
    text = f'patient_id,heart_rate,systolic_bp,diastolic_bp,spo2\n"{FORMULA.replace(chr(34), chr(34) * 2)}",72,118,76,98\n'
    upload = SimpleUploadedFile("patients.csv", text.encode(), content_type="text/csv")

    response = client.post(
        reverse("predict"),
        {"mode": "csv", "csv-version": world.version.pk, "csv-file": upload, "output": "download"},
    )

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    [_, row] = rows(response)
    assert row[0] == "'" + FORMULA and row[1] == "72"
    assert not any(
        c.startswith(csvsafe.FORMULA_START)
        for c in cells(response)
        if not re.fullmatch(r"-?[\d.]+", c)
    )


@pytest.mark.django_db
def test_the_metrics_and_log_exports_neutralise_formulas(client, world):
    # Slugs are checked where sites are created; here one is written straight to the
    # database, as an attacker with database access, or a future path, might.
    world.site_b.slug = "-2+3+cmd"
    world.site_b.save()
    artifacts.write_log_event(
        world.shared, {"event": "started", "round": 0, "at": FORMULA, "sites": []}
    )
    client.force_login(world.charlie)

    metrics = client.get(reverse("experiment_export_metrics", args=[world.shared.pk]))
    log = client.get(reverse("experiment_export_log", args=[world.shared.pk]))

    assert "'-2+3+cmd" in cells(metrics) and "-2+3+cmd" not in cells(metrics)
    assert "'" + FORMULA in cells(log) and FORMULA not in cells(log)
    for response in (metrics, log):
        assert not [
            c
            for c in cells(response)
            if c.startswith(csvsafe.FORMULA_START) and not csvsafe._NUMBER.fullmatch(c)
        ]


@pytest.mark.django_db
def test_the_api_docs_pages_sign_their_inline_code_and_load_nothing_from_elsewhere(client, world):
    client.force_login(world.charlie)

    swagger = client.get("/api/docs/")

    [nonce] = re.findall(r"script-src 'self' 'nonce-([^']+)'", swagger["Content-Security-Policy"])
    page = swagger.content.decode()
    assert (
        page.count(f'<script nonce="{nonce}">') == 1 and page.count(f'<style nonce="{nonce}">') == 1
    )
    policy = dict(d.strip().split(" ", 1) for d in swagger["Content-Security-Policy"].split(";"))
    assert "unsafe" not in policy["script-src"] and "unsafe" not in policy["style-src"]
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page)).replace("http://testserver", "")
    # ReDoc's page (inline styles, a logo from another host) is not served at all.
    assert client.get("/api/redoc/").status_code == 404
