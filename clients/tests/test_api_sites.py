"""GET /api/v1/sites/: scoped to the caller's site; coordinators see all."""

from __future__ import annotations

import pytest

from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/sites/"


def test_no_token_is_401(anon, site_a):
    assert anon.get(URL).status_code == 401
    assert anon.get(f"{URL}{site_a.pk}/").status_code == 401


@pytest.mark.parametrize("who, sees", [("alice", ["a"]), ("bob", ["b"]), ("charlie", ["a", "b"])])
def test_each_persona_lists_the_sites_in_scope(personas, site_a, site_b, who, sees):
    response = personas[who].get(URL)

    assert response.status_code == 200
    slugs = {"a": site_a.slug, "b": site_b.slug}
    assert sorted(s["slug"] for s in response.json()["results"]) == sorted(slugs[x] for x in sees)


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_another_sites_detail_is_404(personas, site_a, who, status):
    response = personas[who].get(f"{URL}{site_a.pk}/")

    assert response.status_code == status
    if status == 404:
        assert response.json()["code"] == "not_found"


def test_filters_and_bad_filter_values(personas, site_a, site_b, make_site):
    make_site("remote", mode="agent")
    charlie = personas["charlie"]

    assert [s["slug"] for s in charlie.get(URL, {"mode": "agent"}).json()["results"]] == ["remote"]
    assert [s["slug"] for s in charlie.get(URL, {"slug": site_b.slug}).json()["results"]] == [
        site_b.slug
    ]
    bad = charlie.get(URL, {"mode": "cloud", "is_active": "maybe"})
    assert bad.status_code == 400 and "mode" in error_fields(bad)


def test_pagination(personas, make_site):
    for i in range(5):
        make_site(f"s{i}")

    page = personas["charlie"].get(URL, {"page_size": 2, "page": 2}).json()

    assert page["count"] >= 5 and len(page["results"]) == 2 and page["previous"]
    assert personas["charlie"].get(URL, {"page": 99}).status_code == 404


def test_sites_are_read_only(personas, site_a):
    assert personas["charlie"].post(URL, {"name": "x", "slug": "x"}).status_code == 405
    assert personas["charlie"].delete(f"{URL}{site_a.pk}/").status_code == 405
