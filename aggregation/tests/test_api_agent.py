"""The site-agent protocol: assignments, claim, global model, update, failure, evaluation,
and every server-side check on an uploaded update."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from aggregation import services
from aggregation.models import ClientUpdate, Round, SiteEvaluation
from aggregation.services import artifacts
from clients.tests.api_support import error_fields
from fedhealth.ml.federation import round_seed
from fedhealth.ml.weights_io import sha256_hex, weights_from_bytes, weights_to_bytes

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

API = "/api/v1/agent"


@pytest.fixture
def mixed(site_a, agent_site, make_dataset, make_experiment, remote_dataset):
    """A running experiment: hosted site A and the agent site, round 1 open."""
    remote = remote_dataset(agent_site, rows=160, seed=5)
    experiment = make_experiment(
        [make_dataset(site_a, rows=160, seed=4), remote], min_sites=2, num_rounds=2
    )
    services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    round_ = experiment.rounds.get(number=1)
    return {
        "experiment": experiment,
        "round": round_,
        "remote": remote,
        "update": ClientUpdate.objects.get(round=round_, site=agent_site),
    }


def trained(experiment, scale: float = 1.01):
    weights, _ = artifacts.global_weights_for(experiment.rounds.order_by("-number").first())
    return {k: (v * scale).astype(np.float32) for k, v in weights.items()}


def upload(agent, round_id: int, data: bytes, *, sha: str | None = "auto", headers=None, **fields):
    form = {
        "weights": SimpleUploadedFile("u.safetensors", data),
        "num_samples": 120,
        "loss": 0.5,
        "metrics": '{"accuracy": 0.8}',
    }
    if sha is not None:
        form["sha256"] = sha256_hex(data) if sha == "auto" else sha
    return agent.post(
        f"{API}/rounds/{round_id}/update/", form | fields, format="multipart", headers=headers
    )


def test_assignments_list_the_sites_pending_training(agent, mixed):
    from aggregation.services import consent

    body = agent.get(f"{API}/assignments/").json()

    # The terms travel with the work, for the agent's own policy (fedhealth/agent/policy.py).
    terms = body["training"][0].pop("terms")
    assert terms == json.loads(json.dumps(consent.terms(mixed["experiment"])))
    assert body["training"][0].pop("terms_sha256") == consent.terms_hash(mixed["experiment"])
    assert body["training"] == [
        {
            "round": mixed["round"].pk,
            "experiment": mixed["experiment"].pk,
            "number": 1,
            "update": mixed["update"].pk,
            "status": "pending",
            "deadline": body["training"][0]["deadline"],
            "secure": False,
        }
    ]
    assert body["secure"] == []  # no secure round owes this site a protocol step
    assert body["evaluations"] == []


def test_claim_returns_the_exact_hosted_configuration(agent, agent_site, mixed):
    experiment = mixed["experiment"]

    task = agent.post(f"{API}/rounds/{mixed['round'].pk}/claim/").json()

    assert (
        task["update"] == mixed["update"].pk
        and task["attempts"] == 1
        and task["dataset"] == mixed["remote"].pk
    )
    assert (
        task["train_config"]
        == experiment.train_config(round_seed(experiment.seed, 1, agent_site.slug)).to_dict()
    )
    assert task["model_config"] == experiment.model_config.to_dict()
    assert task["normalizer"] == experiment.normalizer
    assert task["split"] == {"test_fraction": experiment.test_fraction, "seed": experiment.seed}
    assert ClientUpdate.objects.get(pk=task["update"]).status == "training"
    # A restarted agent claims again and resumes.
    assert agent.post(f"{API}/rounds/{mixed['round'].pk}/claim/").json()["attempts"] == 2


def test_global_model_download_is_verified_safetensors(agent, mixed):
    response = agent.get(f"{API}/rounds/{mixed['round'].pk}/global-model/")

    assert response.status_code == 200 and response["X-Model-Version"] == "0"
    weights = weights_from_bytes(response.content, expected_sha256=response["X-Content-SHA256"])
    expected = trained(mixed["experiment"], scale=1.0)
    assert weights.keys() == expected.keys()


def test_an_update_is_accepted_once_and_a_replay_is_idempotent(agent, mixed):
    data = weights_to_bytes(trained(mixed["experiment"]))

    first = upload(agent, mixed["round"].pk, data)
    replay = upload(agent, mixed["round"].pk, data)

    assert first.status_code == 201, first.json()
    assert first.json()["status"] == "received" and first.json()["source"] == "agent"
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    different = upload(
        agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"], 1.02))
    )
    assert different.status_code == 409 and "different update" in different.json()["detail"]
    assert ClientUpdate.objects.get(pk=mixed["update"].pk).num_samples == 120


def test_the_checksum_may_come_in_a_header(agent, mixed):
    data = weights_to_bytes(trained(mixed["experiment"]))

    response = upload(
        agent, mixed["round"].pk, data, sha=None, headers={"X-Content-SHA256": sha256_hex(data)}
    )

    assert response.status_code == 201


def bad_weights(experiment):
    good = trained(experiment)
    name = next(iter(good))
    return {
        "shape": {**good, name: np.zeros((3, 3), np.float32)},
        "missing": {k: v for k, v in good.items() if k != name},
        "nan": {**good, name: np.full_like(good[name], np.nan)},
        "inf": {**good, name: np.full_like(good[name], np.inf)},
    }


@pytest.mark.parametrize("kind", ["shape", "missing", "nan", "inf"])
def test_updates_that_do_not_fit_the_model_are_400(agent, mixed, kind):
    response = upload(
        agent, mixed["round"].pk, weights_to_bytes(bad_weights(mixed["experiment"])[kind])
    )

    assert response.status_code == 400 and "weights" in error_fields(response)
    assert ClientUpdate.objects.get(pk=mixed["update"].pk).status == "pending"


def test_float64_tensors_are_refused(agent, mixed):
    import safetensors.numpy

    data = safetensors.numpy.save(
        {k: v.astype(np.float64) for k, v in trained(mixed["experiment"]).items()}
    )

    response = upload(agent, mixed["round"].pk, data)

    assert response.status_code == 400 and "float32" in str(
        error_fields(response)["weights"]
    ).replace("F32", "float32")


def test_a_checksum_mismatch_is_400(agent, mixed):
    data = weights_to_bytes(trained(mixed["experiment"]))

    response = upload(agent, mixed["round"].pk, data, sha="0" * 64)

    assert response.status_code == 400 and "sha256" in error_fields(response)
    assert "sha256" in error_fields(upload(agent, mixed["round"].pk, data, sha=None))


class Boom:
    def __reduce__(self):
        return (open, ("/tmp/fedhealth-unpickled-marker", "w"))


def test_a_pickle_is_never_unpickled(agent, mixed, tmp_path):
    import os

    data = pickle.dumps(Boom())

    response = upload(agent, mixed["round"].pk, data)

    assert response.status_code == 400 and "weights" in error_fields(response)
    assert not os.path.exists("/tmp/fedhealth-unpickled-marker")


def test_oversized_updates_are_refused(agent, mixed, settings):
    settings.FEDHEALTH_MAX_UPDATE_BYTES = 1000
    data = weights_to_bytes(trained(mixed["experiment"]))
    assert len(data) > 1000

    response = upload(agent, mixed["round"].pk, data)

    assert response.status_code == 400 and "limit" in error_fields(response)["weights"][0]
    huge = agent.post(
        f"{API}/rounds/{mixed['round'].pk}/update/",
        {"weights": SimpleUploadedFile("u", b"x" * 100_000), "num_samples": 1},
        format="multipart",
    )
    assert huge.status_code == 413 and huge.json()["code"] == "too_large"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": "many"}, "num_samples"),
        ({"loss": "nan"}, "loss"),
        ({"metrics": "{"}, "metrics"),
        ({"metrics": '{"auroc": "high"}'}, "metrics"),
        ({"sha256": "xyz"}, "sha256"),
    ],
)
def test_bad_update_fields_are_400(agent, mixed, fields, field):
    data = weights_to_bytes(trained(mixed["experiment"]))

    response = upload(agent, mixed["round"].pk, data, **fields)

    assert response.status_code == 400 and field in error_fields(response)


def test_an_update_after_the_round_closed_is_409(agent, mixed, personas):
    personas["charlie"].post(f"/api/v1/experiments/{mixed['experiment'].pk}/cancel/")

    response = upload(agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"])))

    assert response.status_code == 409 and "closed" in response.json()["detail"]
    assert agent.post(f"{API}/rounds/{mixed['round'].pk}/claim/").status_code == 409


def test_a_site_not_selected_for_a_round_is_refused_clearly(agent, agent_site, mixed):
    mixed["update"].delete()  # as if the round's sample had left this site out

    for response in (
        upload(agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"]))),
        agent.post(f"{API}/rounds/{mixed['round'].pk}/claim/"),
        agent.get(f"{API}/rounds/{mixed['round'].pk}/global-model/"),
    ):
        assert response.status_code == 409 and "was not selected" in response.json()["detail"]


def test_rounds_of_experiments_without_the_site_are_404(agent, study):
    rid = study["done"].rounds.first().pk

    assert agent.post(f"{API}/rounds/{rid}/claim/").status_code == 404
    assert agent.get(f"{API}/rounds/{rid}/global-model/").status_code == 404
    assert agent.post(f"{API}/rounds/{rid}/failure/", {"reason": "x"}).status_code == 404
    assert (
        agent.post(
            f"{API}/models/{study['done'].versions.first().pk}/evaluation/", {"metrics": {}}
        ).status_code
        == 404
    )


def test_a_failure_report_fails_the_update(agent, mixed):
    url = f"{API}/rounds/{mixed['round'].pk}/failure/"

    response = agent.post(url, {"reason": "disk full"})

    assert response.status_code == 200 and response.json()["status"] == "failed"
    # The agent's words are its own note (shown to its site only); the reason is the product's.
    assert response.json()["site_note"] == "disk full" and response.json()["error_code"] == "site_reported"
    failed = ClientUpdate.objects.get(pk=mixed["update"].pk)
    assert failed.site_note == "disk full" and "disk full" not in failed.error
    assert agent.post(url, {"reason": "again"}).status_code == 200  # idempotent
    assert "reason" in error_fields(agent.post(url, {}))


def test_a_failure_after_the_update_was_received_is_409(agent, mixed):
    upload(agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"])))

    assert (
        agent.post(f"{API}/rounds/{mixed['round'].pk}/failure/", {"reason": "x"}).status_code == 409
    )


def finish_round(agent, mixed, drive):
    assert (
        upload(agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"]))).status_code
        == 201
    )
    drive(mixed["experiment"].pk)  # the hosted site trains; the round aggregates
    assert Round.objects.get(pk=mixed["round"].pk).status == "completed"


def test_new_versions_are_assigned_for_evaluation_and_reported_once(
    agent, agent_site, mixed, drive
):
    finish_round(agent, mixed, drive)
    item = agent.get(f"{API}/assignments/").json()["evaluations"][0]
    assert item["version"] == 1 and item["dataset"] == mixed["remote"].pk
    url = f"{API}/models/{item['model']}/evaluation/"
    curves = {
        "roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]},
        "confusion": {"tn": 5, "fp": 1, "fn": 2, "tp": 9},
        "calibration": {
            "mean_predicted": [0.2, 0.8],
            "fraction_positive": [0.1, 0.9],
            "count": [8, 9],
        },
    }

    first = agent.post(url, {"metrics": {"accuracy": 0.82, "auroc": 0.9}, "curves": curves})
    again = agent.post(url, {"metrics": {"accuracy": 0.1}})

    assert (first.status_code, again.status_code) == (201, 200) and again.json()[
        "recorded"
    ] is False
    evaluation = SiteEvaluation.objects.get(version_id=item["model"], site=agent_site)
    assert evaluation.metrics["accuracy"] == 0.82 and evaluation.curves["confusion"]["tp"] == 9
    assert all(
        e["model"] != item["model"] for e in agent.get(f"{API}/assignments/").json()["evaluations"]
    )


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "metrics"),
        ({"metrics": {"auroc": "nan"}}, "metrics.auroc"),
        (
            {"metrics": {"a": 1}, "curves": {"roc": {"fpr": [0, 1], "tpr": [0]}}},
            "curves.roc.non_field_errors",
        ),
        (
            {"metrics": {"a": 1}, "curves": {"roc": {"fpr": [0, 2], "tpr": [0, 1]}}},
            "curves.roc.fpr.1",
        ),
        (
            {"metrics": {"a": 1}, "curves": {"confusion": {"tn": -1, "fp": 0, "fn": 0, "tp": 0}}},
            "curves.confusion.tn",
        ),
    ],
)
def test_bad_evaluations_are_400(agent, mixed, drive, payload, field):
    finish_round(agent, mixed, drive)
    model = agent.get(f"{API}/assignments/").json()["evaluations"][0]["model"]

    response = agent.post(f"{API}/models/{model}/evaluation/", payload)

    assert response.status_code == 400 and field in error_fields(response), response.json()


def test_no_token_is_401_on_every_agent_endpoint(anon, mixed):
    rid = mixed["round"].pk
    for response in (
        anon.get(f"{API}/assignments/"),
        anon.post(f"{API}/rounds/{rid}/claim/"),
        anon.get(f"{API}/rounds/{rid}/global-model/"),
        anon.post(f"{API}/rounds/{rid}/update/"),
        anon.post(f"{API}/rounds/{rid}/failure/"),
        anon.post(f"{API}/models/1/evaluation/"),
    ):
        assert response.status_code == 401


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
def test_personal_tokens_cannot_act_as_agents(personas, mixed, who):
    client, rid = personas[who], mixed["round"].pk
    for response in (
        client.get(f"{API}/assignments/"),
        client.post(f"{API}/rounds/{rid}/claim/"),
        client.get(f"{API}/rounds/{rid}/global-model/"),
        client.post(f"{API}/rounds/{rid}/failure/"),
    ):
        assert response.status_code == 403


def test_a_hosted_sites_token_cannot_act_as_an_agent(site_a, client_for, mixed):
    client = client_for(site_a)

    response = client.post(f"{API}/rounds/{mixed['round'].pk}/claim/")

    assert response.status_code == 403 and "hosted" in response.json()["detail"]
    assert ClientUpdate.objects.get(round=mixed["round"], site=site_a).status == "pending"


def test_agent_sites_are_never_queued_hosted_work(mixed):
    from aggregation import dispatch, tasks

    sent = []
    original = tasks.train_site.apply_async
    tasks.train_site.apply_async = lambda *a, **k: sent.append(k["queue"])
    try:
        dispatch.queue_round_training(mixed["round"].pk)
    finally:
        tasks.train_site.apply_async = original
    assert sent == [
        "site."
        + ClientUpdate.objects.exclude(pk=mixed["update"].pk).get(round=mixed["round"]).site.slug
    ]
