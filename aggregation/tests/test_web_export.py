"""Exports of an experiment's log and metrics, scoped to the reader."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.urls import reverse

from aggregation import policy
from clients.models import Site
from clients.tests import conftest as web

pytestmark = pytest.mark.django_db
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world


def get(client, user, name, experiment):
    client.force_login(user)
    response = client.get(reverse(name, args=[experiment.pk]))
    assert response.status_code == 200
    return response


def test_coordinator_json_export_has_config_rounds_sites_and_log(client, world):
    response = get(client, world.charlie, "experiment_export_json", world.shared)

    assert response["Content-Disposition"] == f'attachment; filename="shared-vitals-study-{world.shared.pk}.json"'
    data = json.loads(response.content)
    assert data["experiment"]["config"]["rounds"] == 2
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["rounds"][1]["global_metrics"]["accuracy"] == pytest.approx((0.8263 + 0.7611) / 2)
    assert data["rounds"][0]["metrics"]["accepted"] == ["alderley", "brookfield"]
    assert {u["site"] for u in data["site_updates"]} == {"alderley", "brookfield"}
    assert [e["event"] for e in data["log"]][:2] == ["started", "round_completed"]


def test_member_json_export_holds_no_trace_of_other_sites(client, world):
    text = get(client, world.bob, "experiment_export_json", world.shared).content.decode()

    data = json.loads(text)
    assert "alderley" not in text.lower()
    assert {u["site"] for u in data["site_updates"]} == {"brookfield"}
    # Whether its own update was accepted, never the list.
    assert data["rounds"][0]["metrics"] == {"accepted": ["brookfield"], "rejected": []}
    # When the last site evaluated a version is not a site's business.
    assert [e for e in data["log"] if e["event"] == "evaluated"] == []
    assert data["log"][0]["sites"] == ["brookfield"]
    # Two sites only: the mean and one's own figure would give the other's, so a site
    # never sees the global mean, in the rounds or in the log.
    assert data["rounds"][1]["global_metrics"] == {} and data["rounds"][1]["global_final"] is False
    assert "train_loss" not in data["rounds"][1]["metrics"] and "num_samples" not in data["rounds"][1]["metrics"]


def test_metrics_csv_has_global_and_per_site_rows(client, world):
    response = get(client, world.charlie, "experiment_export_metrics", world.shared)

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    sources = [(r["round"], r["source"], r["site"]) for r in rows]
    assert ("2", "global model (mean over sites)", "") in sources
    assert ("2", "local model at site", "alderley") in sources
    assert ("2", "global model at site", "brookfield") in sources
    local_a = next(r for r in rows if r["source"] == "local model at site" and r["site"] == "alderley")
    assert float(local_a["accuracy"]) == 0.8137


def test_member_metrics_csv_has_only_their_site(client, world):
    rows = list(csv.DictReader(io.StringIO(get(client, world.bob, "experiment_export_metrics", world.shared).content.decode())))

    assert {r["site"] for r in rows} == {"", "brookfield"}


def test_log_csv_is_one_event_per_row(client, world):
    rows = list(csv.DictReader(io.StringIO(get(client, world.alice, "experiment_export_log", world.only_a).content.decode())))
    coordinator = get(client, world.charlie, "experiment_export_log", world.only_a).content.decode()

    assert [r["event"] for r in rows] == ["started", "round_completed"]
    assert [r["event"] for r in csv.DictReader(io.StringIO(coordinator))] == ["started", "round_completed", "evaluated"]
    assert "sites: alderley" in rows[0]["details"].split("; ")  # readable, not raw JSON


def test_a_log_line_keeps_only_the_readers_site():
    event = {"event": "round_completed", "round": 3, "accepted": ["a", "b"], "sites": ["a", "b"],
             "rejected": [{"site": "b", "reason": "nan"}], "per_site": {"a": {"x": 1}, "b": {"x": 2}},
             "num_samples": 700, "train_loss": 0.4, "duration_seconds": 3.0, "anything_new": "b"}
    viewer = policy.Viewer(policy.MEMBER, Site(pk=1, slug="a"))

    assert policy.log_event(viewer, event, {}, {"a", "b"}) == {
        "event": "round_completed", "round": 3, "accepted": ["a"], "sites": ["a"], "rejected": [],
        "per_site": {"a": {"x": 1}},
    }
