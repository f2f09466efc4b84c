"""Running sites from the product's pages: the coordinator creates a site and invites its
first site admin; the link works once and expires; a site admin invites, changes roles,
removes people and manages site tokens; a member cannot, another site's admin gets 404;
every change is an audit event and the chain still verifies."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import verify
from clients import people
from clients.models import ApiToken, Invitation, Membership, Site

pytestmark = pytest.mark.django_db

LINK = re.compile(r"https?://[^\s\"<]+/invite/([A-Za-z0-9_-]+)/")
PASSWORD = "Correct-Horse-Battery-17"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def kinds() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("kind", flat=True))


@pytest.fixture
def admin_a(make_user, site_a):
    return make_user("ada", site_a, Membership.Role.SITE_ADMIN)


@pytest.fixture
def admin_b(make_user, site_b):
    return make_user("bea", site_b, Membership.Role.SITE_ADMIN)


def accept(key: str, username: str, password: str = PASSWORD, client: Client | None = None):
    client = client or Client()
    return client, client.post(
        reverse("invitation_accept", args=[key]),
        {"username": username, "password1": password, "password2": password},
    )


# -- the coordinator creates a site and invites its first site admin ------------------------


def test_coordinator_creates_a_site_and_its_admin_accepts_the_link_once(charlie):
    client = signed_in(charlie)
    response = client.post(
        reverse("site_create"),
        {
            "name": "St Anne's Clinic",
            "slug": "st-annes",
            "mode": "agent",
            "contact_name": "Dr Obi",
            "contact_email": "obi@st-annes.example",
            "invite_note": "Dr Obi",
        },
    )
    assert response.status_code == 200
    assert (
        response["Cache-Control"].startswith("max-age=0")
        and "no-store" in response["Cache-Control"]
    )
    site = Site.objects.get(slug="st-annes")
    assert (site.name, site.mode, site.contact_email) == (
        "St Anne's Clinic",
        "agent",
        "obi@st-annes.example",
    )
    key = LINK.search(response.content.decode()).group(1)
    invitation = Invitation.objects.get(site=site)
    assert invitation.role == Invitation.Role.SITE_ADMIN and invitation.note == "Dr Obi"
    assert key not in invitation.key_hash and invitation.key_hash == people.hash_secret(
        key
    )  # never the raw secret
    # The link is shown once: the site's page later lists the invitation, not the link.
    later = client.get(reverse("site_detail", args=[site.pk])).content.decode()
    assert key not in later and "Dr Obi" in later and "Open until" in later

    invitee, response = accept(key, "obi")
    assert response.status_code == 302 and response["Location"] == reverse("site_home")
    obi = Membership.objects.get(user__username="obi")
    assert (obi.site, obi.role) == (site, Membership.Role.SITE_ADMIN)
    assert invitee.get(reverse("site_people")).status_code == 200  # signed in, as site admin

    _, again = accept(key, "mallory")
    assert again.status_code == 410 and b"already been used" in again.content
    assert not Membership.objects.filter(user__username="mallory").exists()
    assert kinds()[-4:] == ["site_create", "invitation_create", "invitation_accept", "sign_in"]
    call_command("audit", "verify")  # exits non-zero on a broken chain


def test_site_form_names_the_bad_field_and_creates_nothing(charlie, site_a):
    client = signed_in(charlie)
    response = client.post(
        reverse("site_create"), {"name": "Another", "slug": site_a.slug, "mode": "hosted"}
    )
    assert response.status_code == 400
    assert b"A site with this short name exists." in response.content
    response = client.post(
        reverse("site_create"), {"name": "Bad", "slug": "no spaces!", "mode": "hosted"}
    )
    assert response.status_code == 400 and b"slug" in response.content.lower()
    assert (
        not Site.objects.filter(name__in=["Another", "Bad"]).exists()
        and not Invitation.objects.exists()
    )


def test_only_the_coordinator_creates_sites(alice, admin_a):
    for user in (alice, admin_a):
        client = signed_in(user)
        assert client.get(reverse("site_create")).status_code == 403
        assert (
            client.post(
                reverse("site_create"), {"name": "X", "slug": "x", "mode": "hosted"}
            ).status_code
            == 403
        )
        assert client.get(reverse("site_detail", args=[user.membership.site.pk])).status_code == 403
    assert not Site.objects.filter(slug="x").exists()
    assert Client().get(reverse("site_create")).status_code == 302  # to the sign-in page


def test_an_expired_or_withdrawn_invitation_does_nothing(site_a, admin_a):
    expired, key = people.invite(site_a, "member", by=admin_a)
    Invitation.objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    page = Client().get(reverse("invitation_accept", args=[key]))
    assert page.status_code == 410 and b"expired" in page.content
    _, response = accept(key, "late")
    assert (
        response.status_code == 410
        and not Membership.objects.filter(user__username="late").exists()
    )

    withdrawn, key = people.invite(site_a, "member", by=admin_a)
    response = signed_in(admin_a).post(reverse("invitation_revoke", args=[withdrawn.pk]))
    assert response.status_code == 302
    _, response = accept(key, "late")
    assert response.status_code == 410 and b"withdrawn" in response.content
    assert Client().get(reverse("invitation_accept", args=["not-a-real-key"])).status_code == 410
    assert kinds()[-1] == "invitation_revoke"


def test_expiry_follows_the_setting(settings, site_a, admin_a):
    settings.FEDHEALTH_INVITATION_DAYS = 2
    invitation, _ = people.invite(site_a, "member", by=admin_a)
    assert (
        timedelta(days=2) - timedelta(seconds=5)
        < invitation.expires_at - timezone.now()
        <= timedelta(days=2)
    )


def test_accepting_checks_the_password_and_username_and_keeps_the_link(site_a, admin_a, make_user):
    make_user("taken", site_a)
    invitation, key = people.invite(site_a, "member", by=admin_a)
    _, response = accept(key, "newcomer", password="short")
    assert response.status_code == 400 and b"too short" in response.content
    _, response = accept(key, "TAKEN")
    assert response.status_code == 400 and b"already exists" in response.content
    invitation.refresh_from_db()
    assert invitation.accepted_at is None  # a failed attempt does not spend it
    _, response = accept(key, "newcomer")
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.accepted_by.username == "newcomer" and invitation.accepted_at is not None


def test_the_service_spends_a_link_once_even_when_the_form_was_passed(site_a, admin_a):
    _, key = people.invite(site_a, "member", by=admin_a)
    people.accept(key, username="first", password=PASSWORD)
    with pytest.raises(people.PeopleChangeRefused, match="already been used"):
        people.accept(key, username="second", password=PASSWORD)
    assert (
        Membership.objects.filter(site=site_a, user__username__in=["first", "second"]).count() == 1
    )


# -- a site admin manages people --------------------------------------------------------------


def test_site_admin_invites_a_member_who_joins_with_that_role(admin_a, site_a):
    client = signed_in(admin_a)
    response = client.post(reverse("site_invite"), {"role": "member", "note": "ward nurse"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    key = LINK.search(response.content.decode()).group(1)
    _, joined = accept(key, "nurse")
    assert joined.status_code == 302
    assert Membership.objects.get(user__username="nurse").role == Membership.Role.MEMBER
    page = client.get(reverse("site_people")).content.decode()
    assert "nurse" in page and key not in page


def test_site_admin_changes_a_role_and_removes_a_member(admin_a, alice, site_a):
    ApiToken.issue(user=alice, name="alice's scripts")
    client = signed_in(admin_a)
    alice_m = alice.membership
    client.post(reverse("member_role", args=[alice_m.pk]), {f"m{alice_m.pk}-role": "site_admin"})
    assert Membership.objects.get(pk=alice_m.pk).role == Membership.Role.SITE_ADMIN
    client.post(reverse("member_role", args=[alice_m.pk]), {f"m{alice_m.pk}-role": "member"})
    assert Membership.objects.get(pk=alice_m.pk).role == Membership.Role.MEMBER
    alice_client = signed_in(alice)
    response = client.post(reverse("member_remove", args=[alice_m.pk]))
    assert response.status_code == 302
    alice.refresh_from_db()
    assert not alice.is_active and not Membership.objects.filter(pk=alice_m.pk).exists()
    assert not ApiToken.objects.filter(user=alice, revoked_at__isnull=True).exists()
    assert alice_client.get(reverse("site_home")).status_code == 302  # her session no longer works
    assert [k for k in kinds() if k != "sign_in"][-4:] == [
        "member_role",
        "member_role",
        "token_revoke",
        "member_remove",
    ]
    assert verify().ok


def test_the_last_site_admin_can_neither_leave_nor_step_down(admin_a, make_user, site_a):
    client = signed_in(admin_a)
    mine = admin_a.membership
    response = client.post(reverse("member_remove", args=[mine.pk]), follow=True)
    assert b"last site admin" in response.content
    client.post(reverse("member_role", args=[mine.pk]), {f"m{mine.pk}-role": "member"})
    mine.refresh_from_db()
    assert mine.role == Membership.Role.SITE_ADMIN and admin_a.is_active

    second = make_user("second-admin", site_a, Membership.Role.SITE_ADMIN)
    response = client.post(reverse("member_remove", args=[mine.pk]))
    assert response.status_code == 302 and response["Location"] == reverse(
        "login"
    )  # left: signed out
    assert list(
        Membership.objects.filter(site=site_a, role="site_admin").values_list("user", flat=True)
    ) == [second.pk]
    with pytest.raises(people.PeopleChangeRefused):
        people.change_role(second.membership, "member", by=second)


def test_a_member_cannot_manage_anything(alice, admin_a, site_a):
    client = signed_in(alice)
    mine = admin_a.membership
    token, _ = ApiToken.issue(site=site_a, name="agent")
    invitation, _ = people.invite(site_a, "member", by=admin_a)
    for method, url, data in [
        ("get", reverse("site_people"), {}),
        ("post", reverse("site_invite"), {"role": "site_admin"}),
        (
            "post",
            reverse("member_role", args=[alice.membership.pk]),
            {f"m{alice.membership.pk}-role": "site_admin"},
        ),
        ("post", reverse("member_remove", args=[mine.pk]), {}),
        ("post", reverse("invitation_revoke", args=[invitation.pk]), {}),
        ("post", reverse("site_token_create"), {"name": "mine now"}),
        ("post", reverse("site_token_revoke", args=[token.pk]), {}),
    ]:
        assert getattr(client, method)(url, data).status_code == 403, url
    alice.membership.refresh_from_db()
    token.refresh_from_db()
    assert alice.membership.role == "member" and token.revoked_at is None
    assert Invitation.objects.count() == 1 and ApiToken.objects.count() == 1
    assert b"People and tokens" not in client.get(reverse("site_home")).content


def test_another_sites_admin_gets_404_on_every_object(admin_a, admin_b, alice, site_a):
    token, raw = ApiToken.issue(site=site_a, name="agent")
    invitation, _ = people.invite(site_a, "member", by=admin_a)
    client = signed_in(admin_b)
    for url, data in [
        (
            reverse("member_role", args=[alice.membership.pk]),
            {f"m{alice.membership.pk}-role": "site_admin"},
        ),
        (reverse("member_remove", args=[alice.membership.pk]), {}),
        (reverse("member_remove", args=[admin_a.membership.pk]), {}),
        (reverse("invitation_revoke", args=[invitation.pk]), {}),
        (reverse("site_token_revoke", args=[token.pk]), {}),
    ]:
        assert client.post(url, data).status_code == 404, url
    page = client.get(reverse("site_people")).content.decode()
    assert "alice" not in page and token.prefix not in page and "Site A" not in page
    token.refresh_from_db()
    invitation.refresh_from_db()
    assert token.revoked_at is None and invitation.revoked_at is None and alice.is_active


# -- site tokens ----------------------------------------------------------------------------


def test_site_admin_creates_lists_and_revokes_a_site_token(admin_a, site_a):
    Site.objects.filter(pk=site_a.pk).update(
        mode=Site.Mode.AGENT
    )  # the agent endpoints serve agent sites
    client = signed_in(admin_a)
    response = client.post(reverse("site_token_create"), {"name": "agent on ward-7"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    raw = re.search(r"fhs_[0-9a-f]{8}_[A-Za-z0-9_-]+", response.content.decode()).group(0)
    token = ApiToken.objects.get(site=site_a)
    assert token.kind == "site" and token.created_by == admin_a and token.matches(raw)
    # The token works on the API until revoked.
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/agent/assignments/").status_code == 200
    page = client.get(reverse("site_people")).content.decode()
    assert token.prefix in page and "agent on ward-7" in page and raw not in page
    client.post(reverse("site_token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None and token.last_used_at is not None
    assert api.get("/api/v1/agent/assignments/").status_code == 401
    assert kinds()[-2:] == ["token_create", "token_revoke"]
    assert verify().ok


def test_a_token_needs_a_name(admin_a):
    response = signed_in(admin_a).post(reverse("site_token_create"), {"name": ""})
    assert response.status_code == 400 and b"This field is required" in response.content
    assert not ApiToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_tabs_racing_on_one_link_make_one_account(make_site, make_user):
    """Threads (each its own database connection) accept the same link at once: the
    conditional UPDATE lets exactly one through, and the others make nothing."""
    import threading

    from django.db import connection

    site = make_site("race")
    admin = make_user("race-admin", site, Membership.Role.SITE_ADMIN)
    _, key = people.invite(site, "member", by=admin)
    start, outcomes = threading.Barrier(4), []

    def take(n: int) -> None:
        try:
            start.wait()
            people.accept(key, username=f"racer{n}", password=PASSWORD)
            outcomes.append("joined")
        except people.PeopleChangeRefused as exc:
            outcomes.append(exc.message)
        except BaseException as exc:  # reported below, not lost in the thread
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count("joined") == 1 and len(outcomes) == 4, outcomes
    assert all(o == "joined" or "already been used" in o for o in outcomes), outcomes
    assert Membership.objects.filter(site=site, user__username__startswith="racer").count() == 1
    assert AuditEvent.objects.filter(kind="invitation_accept").count() == 1
    assert verify().ok


def test_a_hosted_sites_page_says_which_worker_takes_its_queue(charlie, site_a, make_site):
    client = signed_in(charlie)
    hosted = client.get(reverse("site_detail", args=[site_a.pk])).content.decode()
    assert "data-worker-hint" in hosted and "manage.py worker --site site-a" in hosted
    agent = make_site("far-away", mode=Site.Mode.AGENT)
    assert (
        "data-worker-hint"
        not in client.get(reverse("site_detail", args=[agent.pk])).content.decode()
    )
