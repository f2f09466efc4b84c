"""Token authentication: hashed storage, shown once, revocable, last use recorded."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from clients.models import ApiToken
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

SITES = "/api/v1/sites/"


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_only_the_hash_of_a_token_is_stored(alice):
    token, raw = ApiToken.issue(user=alice, name="scripts")

    stored = ApiToken.objects.get(pk=token.pk)
    assert raw.startswith(f"fhp_{stored.prefix}_")
    assert stored.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {getattr(stored, f.attname) for f in ApiToken._meta.concrete_fields}


def test_a_personal_token_acts_as_its_user(alice, site_a, site_b):
    _, raw = ApiToken.issue(user=alice)

    response = bearer(raw).get(SITES)

    assert response.status_code == 200
    assert [s["slug"] for s in response.json()["results"]] == [site_a.slug]


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer nonsense", "Bearer fhp_00000000_x", "Basic abc", "Bearer a b"]
)
def test_missing_or_bad_tokens_answer_401_in_the_error_format(alice, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(SITES)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    error_fields(response)


def test_a_tampered_secret_with_a_valid_prefix_is_refused(alice):
    _, raw = ApiToken.issue(user=alice)

    assert (
        bearer(raw[:-2] + ("AA" if not raw.endswith("AA") else "BB")).get(SITES).status_code == 401
    )


def test_revoked_tokens_stop_working(alice):
    token, raw = ApiToken.issue(user=alice)
    assert bearer(raw).get(SITES).status_code == 200

    token.revoke()

    assert bearer(raw).get(SITES).status_code == 401


def test_inactive_users_tokens_are_refused(alice):
    _, raw = ApiToken.issue(user=alice)
    alice.is_active = False
    alice.save()

    assert bearer(raw).get(SITES).status_code == 401


def test_last_used_at_is_recorded(alice):
    token, raw = ApiToken.issue(user=alice)
    assert token.last_used_at is None

    bearer(raw).get(SITES)

    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_site_token_acts_for_its_site(site_a, site_b, client_for):
    response = client_for(site_b).get(SITES)

    assert [s["slug"] for s in response.json()["results"]] == [site_b.slug]


def test_session_auth_still_works_for_the_browser(alice, site_a):
    client = APIClient()
    client.force_login(alice)

    assert client.get(SITES).status_code == 200


def test_the_command_prints_the_token_once_and_stores_its_hash(alice, site_a):
    out, err = io.StringIO(), io.StringIO()

    call_command(
        "api_token", "create", "--site", site_a.slug, "--name", "agent", stdout=out, stderr=err
    )

    raw = out.getvalue().strip()
    token = ApiToken.objects.get(site=site_a)
    assert raw.startswith("fhs_") and token.matches(raw) and "not be shown again" in err.getvalue()
    assert bearer(raw).get(SITES).status_code == 200
    listing = io.StringIO()
    call_command("api_token", "list", stdout=listing)
    assert token.prefix in listing.getvalue() and raw not in listing.getvalue()
    call_command("api_token", "revoke", token.prefix, stdout=io.StringIO())
    assert bearer(raw).get(SITES).status_code == 401


def test_the_command_creates_personal_tokens(alice):
    out = io.StringIO()
    call_command("api_token", "create", "--user", "alice", stdout=out, stderr=io.StringIO())

    assert ApiToken.objects.get(user=alice).matches(out.getvalue().strip())


def test_the_admin_shows_a_new_token_once(admin_client, site_a):
    response = admin_client.post(
        "/admin/clients/apitoken/add/",
        {"kind": "site", "site": site_a.pk, "name": "agent"},
        follow=True,
    )

    token = ApiToken.objects.get(site=site_a)
    messages = [str(m) for m in response.context["messages"]]
    raw = next(m.split(": ")[-1] for m in messages if "not be shown again" in m)
    assert token.matches(raw)
    page = admin_client.get(f"/admin/clients/apitoken/{token.pk}/change/").content.decode()
    assert raw not in page and token.key_hash not in page


def test_the_admin_revokes_tokens(admin_client, alice):
    token, raw = ApiToken.issue(user=alice)

    admin_client.post(
        "/admin/clients/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )

    assert bearer(raw).get(SITES).status_code == 401


def test_a_token_belongs_to_exactly_one_owner(alice, site_a):
    with pytest.raises(ValueError):
        ApiToken.issue(user=alice, site=site_a)
