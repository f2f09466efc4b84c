"""Experiments over the API: create, list, detail, lifecycle actions, metrics history."""

from __future__ import annotations

import pytest

from aggregation.models import Experiment, Participant
from clients.tests.api_support import error_fields

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/experiments/"


def test_no_token_is_401(anon, study):
    pk = study["done"].pk
    for response in (
        anon.get(URL),
        anon.get(f"{URL}{pk}/"),
        anon.post(URL, {}),
        anon.post(f"{URL}{pk}/start/"),
        anon.get(f"{URL}{pk}/metrics/"),
    ):
        assert response.status_code == 401


@pytest.mark.parametrize(
    "who, sees", [("alice", {"done", "draft"}), ("bob", {"draft"}), ("charlie", {"done", "draft"})]
)
def test_list_is_scoped_to_the_experiments_a_site_takes_part_in(personas, study, who, sees):
    ids = {study[k].pk for k in sees}

    assert {e["id"] for e in personas[who].get(URL).json()["results"]} == ids


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_detail_and_metrics_of_an_experiment_without_your_site_are_404(
    personas, study, who, status
):
    pk = study["done"].pk
    assert personas[who].get(f"{URL}{pk}/").status_code == status
    assert personas[who].get(f"{URL}{pk}/metrics/").status_code == status


def test_detail(personas, study, site_a):
    body = personas["alice"].get(f"{URL}{study['done'].pk}/").json()

    assert body["status"] == "completed" and body["current_round"] == 2
    assert [{k: p[k] for k in ("site", "dataset", "consent")} for p in body["participants"]] == [
        {"site": site_a.slug, "dataset": study["ds_a"].pk, "consent": "accepted"}
    ]
    assert set(body["normalizer"]) == {"mean", "std"}


def test_filter_by_status(personas, study):
    body = personas["charlie"].get(URL, {"status": "draft"}).json()

    assert [e["id"] for e in body["results"]] == [study["draft"].pk]
    assert "status" in error_fields(personas["charlie"].get(URL, {"status": "sleeping"}))


def test_a_coordinator_creates_a_draft(personas, study, site_a, site_b):
    response = personas["charlie"].post(
        URL,
        {
            "name": "new",
            "datasets": [study["ds_a"].pk, study["ds_b"].pk],
            "num_rounds": 4,
            "strategy": "fedprox",
            "strategy_params": {"proximal_mu": 0.01},
            "min_sites": 2,
        },
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "draft" and body["num_rounds"] == 4 and body["strategy"] == "fedprox"
    assert {p["site"] for p in body["participants"]} == {site_a.slug, site_b.slug}
    assert Experiment.objects.get(pk=body["id"]).created_by.username == "charlie"


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_sites_cannot_create_experiments(personas, study, who):
    response = personas[who].post(URL, {"name": "mine", "datasets": [study["ds_a"].pk]})

    assert response.status_code == 403 and response.json()["code"] == "permission_denied"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"datasets": []}, "datasets"),
        ({"datasets": [999999]}, "datasets"),
        ({"datasets": "all"}, "datasets"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"strategy": "fedmagic"}, "strategy"),
        ({"strategy_params": {"eta": 0.1}}, "strategy_params"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"lr": "nan"}, "lr"),
        ({"lr": 5}, "lr"),
        ({"round_timeout": 10**12}, "round_timeout"),
        ({"hidden_layers": [0]}, "hidden_layers.0"),
        ({"test_fraction": 0.9}, "test_fraction"),
        ({"min_sites": 3}, "min_sites"),
        ({"schema": {"features": [{"name": "age"}], "label": "sick"}}, "datasets"),
        ({"schema": {"features": "x"}}, "schema"),
        ({"name": "a\x00b"}, "name"),
    ],
)
def test_bad_payloads_are_400_with_field_errors(personas, study, change, field):
    payload = {"name": "x", "datasets": [study["ds_a"].pk, study["ds_b"].pk]} | change

    response = personas["charlie"].post(URL, payload)

    assert response.status_code == 400, response.json()
    assert field in error_fields(response)


def test_a_rejected_or_duplicate_dataset_is_refused(personas, study, site_a, make_dataset):
    second_a = make_dataset(site_a, rows=100, seed=9)

    response = personas["charlie"].post(
        URL, {"name": "x", "datasets": [study["ds_a"].pk, second_a.pk]}
    )

    assert response.status_code == 400 and "more than one" in error_fields(response)["datasets"][0]


def test_lifecycle_actions(personas, study):
    charlie, pk = personas["charlie"], study["draft"].pk

    assert charlie.post(f"{URL}{pk}/pause/").status_code == 409
    started = charlie.post(f"{URL}{pk}/start/")
    assert started.status_code == 200 and started.json()["status"] == "running"
    assert started.json()["current_round"] == 1
    again = charlie.post(f"{URL}{pk}/start/")
    assert (
        again.status_code == 409
        and again.json()["code"] == "conflict"
        and "draft" in again.json()["detail"]
    )
    assert charlie.post(f"{URL}{pk}/pause/").json()["status"] == "paused"
    assert charlie.post(f"{URL}{pk}/resume/").json()["status"] == "running"
    assert charlie.post(f"{URL}{pk}/cancel/").json()["status"] == "cancelled"
    assert charlie.post(f"{URL}{pk}/cancel/").status_code == 409


@pytest.mark.parametrize("who", ["alice", "bob"])
@pytest.mark.parametrize("verb", ["start", "pause", "resume", "cancel"])
def test_only_coordinators_control_experiments(personas, study, who, verb):
    assert personas[who].post(f"{URL}{study['draft'].pk}/{verb}/").status_code == 403
    assert Experiment.objects.get(pk=study["draft"].pk).status == "draft"


def test_actions_on_unknown_experiments_are_404(personas):
    assert personas["charlie"].post(f"{URL}987654/start/").status_code == 404
    assert personas["charlie"].get(f"{URL}not-a-number/").status_code == 404


def test_start_refuses_an_experiment_that_is_not_ready(personas, study):
    Participant.objects.filter(experiment=study["draft"]).update(dataset=None)

    response = personas["charlie"].post(f"{URL}{study['draft'].pk}/start/")

    assert response.status_code == 409 and "waiting for sites to accept" in response.json()["detail"]


def test_metrics_history(personas, study, site_a):
    body = personas["charlie"].get(f"{URL}{study['done'].pk}/metrics/").json()

    assert [r["round"] for r in body["rounds"]] == [1, 2]
    last = body["rounds"][-1]
    assert (
        last["version"] == 2 and last["sites_reported"] == 1 and last["accepted"] == [site_a.slug]
    )
    assert "accuracy" in last["mean"] and set(last["per_site"]) == {site_a.slug}
    assert last["train_loss"] > 0 and last["num_samples"] > 0
