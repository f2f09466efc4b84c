"""The API's surface: OpenAPI schema, local docs, one error format, throttling."""

from __future__ import annotations

import pytest

from clients.tests.api_support import error_fields
from fedhealth.api.throttles import ScopedThrottle

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db


def test_the_openapi_schema_describes_every_resource_and_the_token_scheme(anon):
    response = anon.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for path in [
        "/api/v1/sites/",
        "/api/v1/datasets/",
        "/api/v1/experiments/{id}/start/",
        "/api/v1/experiments/{id}/metrics/",
        "/api/v1/rounds/",
        "/api/v1/updates/",
        "/api/v1/models/{id}/weights/",
        "/api/v1/models/{id}/predict/",
        "/api/v1/agent/assignments/",
        "/api/v1/agent/datasets/",
        "/api/v1/agent/rounds/{id}/claim/",
        "/api/v1/agent/rounds/{id}/global-model/",
        "/api/v1/agent/rounds/{id}/update/",
        "/api/v1/agent/rounds/{id}/failure/",
        "/api/v1/agent/models/{id}/evaluation/",
        "/api/v1/agent/experiments/{id}/comparison/",
    ]:
        assert path in paths
    assert schema["components"]["securitySchemes"]["tokenAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["tokenAuth"]["description"],
    }
    assert schema["paths"]["/api/v1/sites/"]["get"]["responses"]["401"]["content"][
        "application/json"
    ]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_the_docs_page_serves_its_assets_locally(anon):
    page = anon.get("/api/docs/").content.decode()

    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn" not in page.lower() and "https://" not in page


@pytest.mark.parametrize(
    "path", ["/api/v1/sites/999/", "/api/v1/experiments/abc/", "/api/v1/models/0/"]
)
def test_not_found_uses_the_error_format(personas, path):
    response = personas["charlie"].get(path)

    assert response.status_code == 404 and error_fields(response) == {}
    assert response.json()["code"] == "not_found"


def test_malformed_json_is_400_in_the_error_format(personas):
    response = personas["charlie"].post(
        "/api/v1/experiments/", "{nope", content_type="application/json"
    )

    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_throttling_answers_429_with_retry_after(personas, monkeypatch):
    monkeypatch.setattr(
        ScopedThrottle, "THROTTLE_RATES", {**ScopedThrottle.THROTTLE_RATES, "api": "3/min"}
    )
    client = personas["alice"]

    statuses = [client.get("/api/v1/sites/").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    response = client.get("/api/v1/sites/")
    assert response.json()["code"] == "throttled" and int(response["Retry-After"]) > 0
    assert personas["bob"].get("/api/v1/sites/").status_code == 200  # counted per caller


def test_bad_throttle_rates_stop_start_up(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    import fedhealth.settings as settings_module

    monkeypatch.setenv("API_THROTTLE_RATE", "lots")
    with pytest.raises(ImproperlyConfigured, match="API_THROTTLE_RATE"):
        importlib.reload(settings_module)
    monkeypatch.delenv("API_THROTTLE_RATE")
    importlib.reload(settings_module)


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_api_urls_are_json_404_even_with_a_session_cookie(personas, method):
    client = personas["charlie"]
    client.cookies["sessionid"] = "whatever"

    response = getattr(client, method)("/api/v1/experiments/0.5/start/")

    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_options_describes_agent_endpoints_without_error(agent):
    assert agent.options("/api/v1/agent/rounds/1/claim/").status_code == 200
