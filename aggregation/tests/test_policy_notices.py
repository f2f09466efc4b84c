"""With fewer than three sites, what each site can infer is said: on the experiment form,
after saving, on the experiment page, and in the API docs."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from aggregation.forms import FEW_SITES_NOTICE
from aggregation.models import Experiment
from clients.tests import conftest as web

from .test_web_experiments import form_data

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db
world = web.world  # a fixture: sites A and B, and experiments over them

NOTICE = "infer the other&#x27;s feature means and standard deviations from the normaliser"


def test_the_form_says_it_and_warns_when_fewer_than_three_sites_are_chosen(client, world):
    client.force_login(world.charlie)

    blank = client.get(reverse("experiment_create")).content.decode()
    refused = client.post(
        reverse("experiment_create"), form_data(world, name="")
    )  # invalid: shown again
    saved = client.post(reverse("experiment_create"), form_data(world, name="Two sites"))

    assert NOTICE in blank and 'alert alert-warning" data-few-sites' not in blank
    assert 'alert alert-warning" data-few-sites' in refused.content.decode()
    assert Experiment.objects.filter(name="Two sites").exists()
    assert saved.status_code == 302 and FEW_SITES_NOTICE in [
        str(m) for m in get_messages(saved.wsgi_request)
    ]


def test_the_experiment_page_says_it_to_the_coordinator_and_to_the_sites(client, world):
    for user in (world.charlie, world.alice):
        client.force_login(user)
        page = client.get(reverse("experiment_detail", args=[world.shared.pk])).content.decode()
        assert NOTICE in page, user


def test_the_api_docs_say_it(personas):
    schema = personas["charlie"].get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()

    create = schema["paths"]["/api/v1/experiments/"]["post"]["description"]
    num_sites = schema["components"]["schemas"]["Experiment"]["properties"]["num_sites"][
        "description"
    ]
    assert "feature means and" in create and "feature means and" in num_sites


def test_an_agents_note_is_escaped_on_its_own_sites_pages(client, world):
    from aggregation.models import ClientUpdate

    note = '<img src=x onerror="alert(1)">'
    ClientUpdate.objects.filter(site=world.site_a, status="failed").update(site_note=note)
    client.force_login(world.alice)

    home = client.get(reverse("site_home")).content.decode()
    live = client.get(reverse("experiment_live", args=[world.only_a.pk])).json()["html"]["rounds"]

    for text in (home, live):
        assert note not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
