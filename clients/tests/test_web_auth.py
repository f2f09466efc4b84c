"""Signing in and out, changing a password, and the lock-out after repeated failures."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def sign_in(client, username: str, password: str):
    return client.post(reverse("login"), {"username": username, "password": password})


def test_sign_in_page_renders(client):
    response = client.get(reverse("login"))

    assert response.status_code == 200
    assert b"Sign in" in response.content and b'name="csrfmiddlewaretoken"' in response.content


@pytest.mark.parametrize(("persona", "landing"), [("alice", "site_home"), ("charlie", "dashboard")])
def test_signing_in_lands_on_the_persons_home(client, request, persona, landing):
    request.getfixturevalue(persona)

    response = sign_in(client, persona, f"pw-{persona}")
    assert response.status_code == 302 and response["Location"] == reverse("home")

    assert client.get(reverse("home"))["Location"] == reverse(landing)


def test_a_wrong_password_says_so_without_saying_which_part_was_wrong(client, alice):
    response = sign_in(client, "alice", "wrong")

    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_signing_in_is_locked_after_five_failures(client, alice, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert sign_in(client, "alice", "wrong").status_code == 200

    fifth = sign_in(client, "alice", "wrong")
    with_the_right_password = sign_in(client, "alice", "pw-alice")

    for response in (fifth, with_the_right_password):
        assert response.status_code == 429
        page = response.content.decode()
        assert "Signing in is locked" in page and "15 minutes" in page
    assert "_auth_user_id" not in client.session


def test_other_users_are_not_locked_by_someone_elses_failures(client, alice, bob):
    for _ in range(5):
        sign_in(client, "alice", "wrong")

    assert sign_in(client, "bob", "pw-bob").status_code == 302


def test_sign_out_needs_a_post(client, alice):
    client.force_login(alice)

    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))

    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert client.get(reverse("site_home")).status_code == 302


def test_password_change(client, alice):
    client.force_login(alice)

    response = client.post(reverse("password_change"), {
        "old_password": "pw-alice", "new_password1": "a-Much-longer-passphrase-9", "new_password2": "a-Much-longer-passphrase-9",
    }, follow=True)

    assert response.redirect_chain[-1][0] == reverse("password_change_done")
    alice.refresh_from_db()
    assert alice.check_password("a-Much-longer-passphrase-9")


def test_password_change_rejects_a_weak_password(client, alice):
    client.force_login(alice)

    response = client.post(reverse("password_change"), {
        "old_password": "pw-alice", "new_password1": "123", "new_password2": "123",
    })

    assert response.status_code == 200 and response.context["form"].errors["new_password2"]


def test_sign_in_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)

    assert sign_in(client, "alice", "pw-alice").status_code == 403


def test_a_user_without_a_site_is_told_so(client, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="pw")
    client.force_login(user)

    response = client.get(reverse("home"))

    assert response.status_code == 403
    assert "not attached to a site" in response.content.decode()
