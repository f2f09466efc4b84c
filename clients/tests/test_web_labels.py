"""Every form control on every form page has a label (a <label for=id> or an aria-label)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

UNLABELLED_TYPES = {"hidden", "submit", "button", "reset", "image"}


class Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str]] = []
        self.label_for: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"])
        elif tag in ("input", "select", "textarea") and a.get("type", "text") not in UNLABELLED_TYPES:
            self.controls.append({**a, "_tag": tag})


def controls(html: str) -> Controls:
    parser = Controls()
    parser.feed(html)
    return parser


def unlabelled(html: str) -> list[dict[str, str]]:
    parser = controls(html)
    return [
        c for c in parser.controls
        if not c.get("aria-label") and not c.get("aria-labelledby") and c.get("id") not in parser.label_for
    ]


def _pages(world):
    return [
        ("alice", reverse("site_home")),
        ("alice", reverse("dataset_upload")),
        ("alice", reverse("predict")),
        ("alice", reverse("password_change")),
        ("alice", reverse("experiment_detail", args=[world.shared.pk])),
        ("charlie", reverse("experiment_create")),
        ("charlie", reverse("experiment_edit", args=[world.draft.pk])),
        ("charlie", reverse("model_list", args=[world.shared.pk])),
    ]


def test_every_form_control_has_a_label(client, world):
    checked = 0
    for persona, url in _pages(world):
        client.force_login(getattr(world, persona))
        html = client.get(url).content.decode()
        assert unlabelled(html) == [], url
        checked += len(controls(html).controls)
    assert checked > 40  # the pages really were forms


def test_the_sign_in_form_is_labelled(client, world):
    html = client.get(reverse("login")).content.decode()

    assert {c["name"] for c in controls(html).controls} == {"username", "password"}
    assert unlabelled(html) == []


def test_forms_after_errors_stay_labelled(client, world):
    client.force_login(world.charlie)
    html = client.post(reverse("experiment_create"), {"name": ""}).content.decode()

    assert "errorlist" in html and unlabelled(html) == []


def test_the_checker_spots_a_missing_label():
    assert len(unlabelled('<label for="a">A</label><input id="a"><input id="b"><select></select>')) == 2
