"""The live experiment page and the JSON document it polls."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from aggregation import services
from aggregation.views import charts
from clients.tests import conftest as web

pytestmark = pytest.mark.django_db
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world


def live(client, experiment):
    response = client.get(reverse("experiment_live", args=[experiment.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    return response


def points(figure, trace=0):
    return [(x, y) for x, y in zip(figure["data"][trace]["x"], figure["data"][trace]["y"], strict=True) if y is not None]


def test_a_real_run_moves_the_progress_and_fills_the_charts(client, charlie, make_site, make_dataset,
                                                            make_experiment, drive):
    datasets = [make_dataset(make_site(f"h-{i}"), rows=200, seed=i) for i in range(2)]
    experiment = make_experiment(datasets, num_rounds=2, local_epochs=1, min_sites=2)
    client.force_login(charlie)

    before = live(client, experiment).json()
    client.post(reverse("experiment_start", args=[experiment.pk]))
    started = live(client, experiment).json()
    drive(experiment.pk)
    done = live(client, experiment).json()

    assert before["progress"]["text"] == "Not started · 2 rounds planned" and not before["done"]
    assert started["progress"] | {"text": None} == started["progress"] | {
        "status": "running", "round": 1, "sites_selected": 2, "sites_reported": 0, "percent": 0, "text": None,
    }
    assert started["progress"]["text"] == "Round 1 of 2 · 0 of 2 sites reported"
    assert points(started["figures"]["global"]["accuracy"]) == []
    assert done["progress"]["text"] == "Completed · 2 of 2 rounds" and done["progress"]["percent"] == 100
    assert done["done"] is True
    for key in ("balanced_accuracy", "auroc", "accuracy", "loss"):
        assert [x for x, _ in points(done["figures"]["global"][key])] == [1, 2]
    assert [x for x, _ in points(done["figures"]["global"]["loss"], trace=1)] == [1, 2]  # training loss
    local, glob = done["figures"]["sites"]["auroc"]["data"]
    assert local["x"] == glob["x"] == ["H 0", "H 1"] and None not in local["y"] + glob["y"]
    assert 'aria-valuenow="100"' in done["html"]["progress"]
    assert done["html"]["rounds"].count("badge badge-received") == 4  # the by-round table
    assert done["html"]["rounds"].count('<li class="cell cell-received"') == 4  # the strips


def test_the_page_renders_the_same_state_without_javascript(client, world):
    client.force_login(world.charlie)

    page = client.get(reverse("experiment_detail", args=[world.shared.pk])).content.decode()

    assert "Completed · 2 of 2 rounds" in page
    assert 'id="live-initial"' in page and 'data-live-url="/experiments/' in page
    assert "vendor/plotly.min.js" in page
    assert page.count('class="chart"') == 5  # balanced accuracy, AUROC, accuracy, loss; the sites


def test_poll_interval_comes_from_settings(client, world, settings):
    settings.FEDHEALTH_POLL_MS = 750
    client.force_login(world.alice)

    page = client.get(reverse("experiment_detail", args=[world.shared.pk])).content.decode()

    assert 'data-poll-ms="750"' in page


def test_members_see_only_their_own_site_in_the_table_and_chart(client, world):
    client.force_login(world.alice)

    data = live(client, world.shared).json()

    assert data["figures"]["sites"]["accuracy"]["data"][0]["x"] == [world.site_a.name]
    assert world.site_a.name in data["html"]["rounds"] and world.site_b.name not in data["html"]["rounds"]
    assert data["html"]["actions"].strip() == ""


def test_coordinator_sees_every_site_and_the_buttons(client, world):
    client.force_login(world.charlie)

    data = live(client, world.draft).json()

    assert "Start experiment" in data["html"]["actions"]
    assert data["figures"]["sites"]["accuracy"]["data"][0]["x"] == [world.site_a.name, world.site_b.name]


def test_undefined_figures_become_null_in_json():
    # AUROC is NaN on a site with one class; JSON has no NaN (the browser's JSON.parse
    # would reject the whole document).
    figures = charts.global_figures(2, [(1, {"auroc": float("nan"), "accuracy": 0.9})], {1: float("inf")})

    text = json.dumps(figures, allow_nan=False)

    assert json.loads(text)["auroc"]["data"][0]["y"] == [None]
    assert charts.clean({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_paused_progress_says_so(client, world, make_experiment):
    experiment = make_experiment([world.ds_a, world.ds_b], num_rounds=3)
    services.start_experiment(experiment.pk)
    services.pause_experiment(experiment.pk)
    client.force_login(world.charlie)

    data = live(client, experiment).json()

    assert data["progress"]["text"] == "Paused · Round 1 of 3 · 0 of 2 sites reported"
    assert "Resume" in data["html"]["actions"] and not data["done"]
