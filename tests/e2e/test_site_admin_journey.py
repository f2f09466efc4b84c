"""A new site set up entirely from the product's pages, in a real browser: the coordinator
creates the site and gets its first site admin's invitation link; the invitee opens it,
chooses a username and password and lands on the site's page as its admin; they create a
site token (shown once) that the API then accepts; the link does not work a second time.
Each page is checked at a desktop's and a phone's width (screenshots in
test-artifacts/screenshots/)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from clients.models import ApiToken, Membership, Site

from .conftest import DESKTOP, PASSWORD, query
from .test_browser_journey import Watch, both_widths, sign_in

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.timeout(300),
]


def test_coordinator_invites_a_site_admin_who_creates_a_token(product, browser, shoot):
    host = urlparse(product.url).netloc
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = Watch(page, host)

    # -- the coordinator creates the site ---------------------------------------------------
    sign_in(page, product.url, "carol")
    page.get_by_role("link", name="Add a site").click()
    expect(page.get_by_role("heading", name="New site")).to_be_visible()
    both_widths(browser, page, shoot, "20-new-site")
    page.get_by_label("Site name").fill("Hillside Hospital")
    page.get_by_label("Short name").fill("hillside")
    page.get_by_label("How the site trains").select_option("agent")
    page.get_by_label("Contact name").fill("Dr Hill")
    page.get_by_label("Contact email").fill("hill@hillside.example")
    page.get_by_label("First site admin").fill("Dr Hill")
    page.get_by_role("button", name="Create site and invitation").click()
    expect(page.get_by_role("heading", name="Hillside Hospital")).to_be_visible()
    link = page.locator("[data-secret=invitation] [data-secret-value]").input_value()
    assert re.fullmatch(rf"{re.escape(product.url)}/invite/[A-Za-z0-9_-]{{40,}}/", link), link
    site = query(lambda: Site.objects.get(slug="hillside"))
    assert site.mode == "agent" and site.contact_email == "hill@hillside.example"
    shoot(page, "21-site-invitation-desktop")
    # Afterwards the site's page lists the invitation, never the link again.
    both_widths(
        browser,
        page,
        shoot,
        "21-site-detail",
        path=f"{product.url}/coordinator/sites/{site.pk}/",
        visible=("[data-invitations] td",),
    )
    page.goto(f"{product.url}/coordinator/sites/{site.pk}/")
    expect(page.locator("[data-invitations]")).to_contain_text("Open until")
    assert link not in page.content()
    page.goto(product.url + "/coordinator/")
    expect(page.get_by_role("link", name="Hillside Hospital")).to_be_visible()
    both_widths(browser, page, shoot, "25-dashboard-with-new-site", visible=("[data-sites] td",))
    page.get_by_role("button", name="Sign out").click()

    # -- the invitee accepts, in a browser of their own ----------------------------------------
    invitee = browser.new_context(viewport=DESKTOP)
    hill = invitee.new_page()
    hill.set_default_timeout(20_000)
    hill_watch = Watch(hill, host)
    hill.goto(link)
    expect(hill.get_by_role("heading", name="Join Hillside Hospital")).to_be_visible()
    expect(hill.get_by_text("site admin", exact=False).first).to_be_visible()
    both_widths(browser, hill, shoot, "22-accept-invitation")
    hill.get_by_label("Username").fill("drhill")
    hill.get_by_label("Password", exact=True).fill(PASSWORD)
    hill.get_by_label("Password confirmation").fill(PASSWORD)
    hill.get_by_role("button", name="Create account and join").click()
    expect(hill).to_have_url(product.url + "/site/")
    expect(hill.get_by_role("status")).to_contain_text("Welcome to Hillside Hospital")
    membership = query(
        lambda: Membership.objects.select_related("site").get(user__username="drhill")
    )
    assert (membership.site.slug, membership.role) == ("hillside", Membership.Role.SITE_ADMIN)

    # -- the new site admin creates a site token ----------------------------------------------
    hill.get_by_role("link", name="People and tokens").click()
    expect(hill.get_by_role("heading", name="People and tokens")).to_be_visible()
    expect(hill.locator("[data-members]")).to_contain_text("drhill")
    hill.get_by_label("What the token is for").fill("agent on hillside-fl01")
    hill.get_by_role("button", name="Create token").click()
    raw = hill.locator("[data-secret=token] [data-secret-value]").input_value()
    assert re.fullmatch(r"fhs_[0-9a-f]{8}_[A-Za-z0-9_-]+", raw), raw
    shoot(hill, "23-token-created-desktop")
    token = query(lambda: ApiToken.objects.get(site__slug="hillside"))
    assert token.kind == "site" and token.name == "agent on hillside-fl01" and token.matches(raw)
    assigned = hill.request.get(
        product.url + "/api/v1/agent/assignments/", headers={"Authorization": f"Bearer {raw}"}
    )
    assert assigned.status == 200, assigned.text()
    hill.goto(product.url + "/site/people/")
    expect(hill.locator("[data-tokens]")).to_contain_text(token.prefix)
    assert raw not in hill.content()
    both_widths(
        browser,
        hill,
        shoot,
        "24-people-and-tokens",
        visible=("[data-members] td", "[data-tokens] td", "[data-invitations] td"),
    )

    # -- the link does not work twice ---------------------------------------------------------
    again = browser.new_context(viewport=DESKTOP).new_page()
    response = again.goto(link)
    assert response.status == 410
    expect(again.locator("[data-invitation-closed]")).to_contain_text("already been used")
    again.context.close()

    assert watch.problems == [] and hill_watch.problems == [], watch.problems + hill_watch.problems
    invitee.close()
    context.close()
