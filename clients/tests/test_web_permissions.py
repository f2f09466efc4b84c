"""Every page and JSON endpoint against the three personas and an anonymous visitor.

alice: member of site A · bob: member of site B · charlie: coordinator. Objects of
site A (its datasets, the experiment only A takes part in, its model) answer bob 404,
exactly as a missing object does; coordinator-only pages answer site members 403
before any lookup, so a 403 never reveals whether an object exists.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from .conftest import World

pytestmark = pytest.mark.django_db

# (url name, how to get the pk from the world, method, expected status for alice, bob, charlie)
CASES = [
    ("home", None, "get", 302, 302, 302),
    ("site_home", None, "get", 200, 200, 403),
    ("dataset_upload", None, "get", 200, 200, 403),
    ("dataset_detail", lambda w: w.ds_a.pk, "get", 200, 404, 200),
    ("dataset_detail", lambda w: w.rejected_a.pk, "get", 200, 404, 200),
    ("dataset_download", lambda w: w.ds_a.pk, "get", 200, 404, 404),
    ("dashboard", None, "get", 403, 403, 200),
    ("experiment_list", None, "get", 200, 200, 200),
    ("experiment_create", None, "get", 403, 403, 200),
    ("experiment_detail", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("experiment_detail", lambda w: w.shared.pk, "get", 200, 200, 200),
    ("experiment_edit", lambda w: w.draft.pk, "get", 403, 403, 200),
    ("experiment_live", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("experiment_live", lambda w: w.shared.pk, "get", 200, 200, 200),
    ("experiment_start", lambda w: w.draft.pk, "post", 403, 403, 302),
    ("experiment_pause", lambda w: w.only_a.pk, "post", 403, 403, 302),
    ("experiment_resume", lambda w: w.only_a.pk, "post", 403, 403, 302),
    ("experiment_cancel", lambda w: w.draft.pk, "post", 403, 403, 302),
    ("experiment_export_json", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("experiment_export_metrics", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("experiment_export_log", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("model_list", lambda w: w.only_a.pk, "get", 200, 404, 200),
    ("model_list", lambda w: w.shared.pk, "get", 200, 200, 200),
    ("model_download", lambda w: w.version_a.pk, "get", 200, 404, 200),
    ("model_download", lambda w: w.version.pk, "get", 200, 200, 200),
    ("predict", None, "get", 200, 200, 200),
    ("password_change", None, "get", 200, 200, 200),
]
PERSONAS = ["alice", "bob", "charlie"]


def _url(world: World, name: str, pk) -> str:
    return reverse(name, args=[pk(world)] if pk else [])


def _ids(case) -> str:
    return case[0] if case[1] is None else f"{case[0]}-{case[1].__code__.co_names[-2]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("persona", PERSONAS)
def test_persona_gets_expected_status(client, world, case, persona):
    name, pk, method, *expected = case
    client.force_login(getattr(world, persona))

    response = getattr(client, method)(_url(world, name, pk))
    response.close()  # a file download streams from an open file

    assert response.status_code == expected[PERSONAS.index(persona)], response.status_code


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_anonymous_is_sent_to_sign_in(client, world, case):
    name, pk, method, *_ = case
    url = _url(world, name, pk)

    response = getattr(client, method)(url)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_predict_with_another_sites_version_is_404(client, world):
    client.force_login(world.bob)

    assert client.get(reverse("predict"), {"version": world.version_a.pk}).status_code == 404
    assert client.post(reverse("predict"), {"mode": "single", "version": world.version_a.pk}).status_code == 404


def test_models_page_with_unknown_version_number_is_404(client, world):
    client.force_login(world.alice)

    assert client.get(reverse("model_list", args=[world.shared.pk]), {"version": 99}).status_code == 404


@pytest.mark.parametrize("name", ["experiment_detail", "experiment_live", "model_list", "experiment_export_json"])
def test_another_sites_object_looks_exactly_like_a_missing_one(client, world, name):
    client.force_login(world.bob)

    hidden = client.get(reverse(name, args=[world.only_a.pk]))
    missing = client.get(reverse(name, args=[world.only_a.pk + 10_000]))

    assert hidden.status_code == missing.status_code == 404
    assert _without_csrf(hidden) == _without_csrf(missing)


def _without_csrf(response) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", response.content.decode())


def test_coordinator_only_pages_refuse_members_whether_or_not_the_object_exists(client, world):
    client.force_login(world.bob)

    for pk in (world.only_a.pk, world.only_a.pk + 10_000):
        assert client.get(reverse("experiment_edit", args=[pk])).status_code == 403
        assert client.post(reverse("experiment_cancel", args=[pk])).status_code == 403


def test_member_of_a_deactivated_site_sees_nothing(client, world):
    world.site_a.is_active = False
    world.site_a.save()
    client.force_login(world.alice)

    assert client.get(reverse("home")).status_code == 403
    assert client.get(reverse("site_home")).status_code == 403
    assert client.get(reverse("experiment_detail", args=[world.shared.pk])).status_code == 404
    assert client.get(reverse("dataset_detail", args=[world.ds_a.pk])).status_code == 404


def test_actions_require_post(client, world):
    client.force_login(world.charlie)

    assert client.get(reverse("experiment_start", args=[world.draft.pk])).status_code == 405


def test_lifecycle_buttons_need_the_csrf_token(world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.charlie)

    assert client.post(reverse("experiment_start", args=[world.draft.pk])).status_code == 403
    world.draft.refresh_from_db()
    assert world.draft.status == "draft"
