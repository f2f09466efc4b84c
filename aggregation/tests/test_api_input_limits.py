"""Limits on what a request may carry: JSON nesting (every JSON endpoint and JSON inside
multipart fields), evaluation curves and metrics from agents."""

# ruff: noqa: F811  (the `mixed` fixture is imported from test_api_agent and used by name)
from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from aggregation.models import ClientUpdate, Experiment, SiteEvaluation
from clients.models import Dataset
from clients.tests.api_support import error_fields
from fedhealth.api.parsers import MAX_JSON_DEPTH, json_depth
from fedhealth.ml.metrics import MAX_CALIBRATION_BINS, MAX_ROC_POINTS, roc_points
from fedhealth.ml.weights_io import weights_to_bytes

from .test_api_agent import finish_round, mixed, trained, upload  # noqa: F401  (fixture)

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

API = "/api/v1"
DEEP = "[" * 100_000 + "]" * 100_000


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def assert_parse_error(response):
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "parse_error" and f"deeper than {MAX_JSON_DEPTH}" in body["detail"]


def test_depth_is_measured_outside_strings():
    assert json_depth('{"a": "[[[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert json_depth("17") == 0
    assert json_depth(DEEP) == 100_000


def test_depth_with_and_without_escapes_matches_the_decoded_documents():
    """Documents without a backslash take the quote-parity path, others the string
    pattern: both must give the depth of what the decoder builds, brackets, quotes and
    non-ASCII text inside strings included."""
    import json
    import random

    def depth(value) -> int:
        if isinstance(value, dict | list):
            children = value.values() if isinstance(value, dict) else value
            return 1 + max((depth(v) for v in children), default=0)
        return 0

    rng = random.Random(0)

    def document(level: int):
        r = rng.random()
        if level > 8 or r < 0.3:
            return rng.choice([1, 2.5, None, "x[", "}{", "[]{}", 'a"b', "c\\", "é[", "plain"])
        if r < 0.65:
            return [document(level + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", "]", "{", "é"]): document(level + 1) for _ in range(rng.randint(0, 3))}

    texts = [json.dumps(document(0), ensure_ascii=rng.random() < 0.5) for _ in range(3000)]
    assert {"\\" in t for t in texts} == {True, False}  # both paths taken
    for text in texts:
        assert json_depth(text) == depth(json.loads(text)), text
    assert json_depth('[["]]]]"], "x"]') == 2 and json_depth('""') == 0


@pytest.fixture
def evaluation_url(agent, mixed, drive):  # noqa: F811
    finish_round(agent, mixed, drive)
    model = agent.get(f"{API}/agent/assignments/").json()["evaluations"][0]["model"]
    return f"{API}/agent/models/{model}/evaluation/"


def test_deep_json_is_400_on_every_kind_of_json_endpoint(personas, agent, mixed, evaluation_url):  # noqa: F811
    posts = [
        (personas["charlie"], f"{API}/experiments/"),
        (agent, f"{API}/agent/datasets/"),
        (agent, f"{API}/agent/rounds/{mixed['round'].pk}/failure/"),
        (agent, evaluation_url),
        (personas["alice"], f"{API}/models/{mixed['experiment'].versions.first().pk}/predict/"),
    ]
    for client, url in posts:
        for body in (DEEP, nested(MAX_JSON_DEPTH + 1)):
            assert_parse_error(client.post(url, data=body, content_type="application/json"))

    assert not SiteEvaluation.objects.filter(site__slug="agent-a").exists()
    assert not Experiment.objects.filter(name="x").exists()


def test_json_at_the_limit_is_parsed(personas, study):
    # Nested exactly MAX_JSON_DEPTH deep: parsed, then refused for what it says.
    body = '{"name": "x", "datasets": [1], "schema": ' + nested(MAX_JSON_DEPTH - 1) + "}"

    response = personas["charlie"].post(
        f"{API}/experiments/", data=body, content_type="application/json"
    )

    assert response.status_code == 400 and "schema" in error_fields(response)


def test_deep_json_inside_multipart_fields_is_400_naming_the_field(
    alice, client_for, agent, mixed, csv_bytes
):  # noqa: F811
    member = client_for(alice)
    before = Dataset.objects.count()
    response = member.post(
        f"{API}/datasets/",
        {"file": SimpleUploadedFile("a.csv", csv_bytes(50)), "schema": DEEP},
        format="multipart",
    )
    assert response.status_code == 400 and "schema" in error_fields(response)
    assert Dataset.objects.count() == before

    response = upload(
        agent, mixed["round"].pk, weights_to_bytes(trained(mixed["experiment"])), metrics=DEEP
    )
    assert response.status_code == 400 and "metrics" in error_fields(response)
    assert ClientUpdate.objects.get(pk=mixed["update"].pk).status != "received"


def monotone(n: int) -> list[float]:
    return np.linspace(0, 1, n).tolist()


def test_a_100000_point_roc_curve_is_refused_and_nothing_recorded(agent, evaluation_url):
    points = monotone(100_000)

    response = agent.post(
        evaluation_url,
        {"metrics": {"accuracy": 0.8}, "curves": {"roc": {"fpr": points, "tpr": points}}},
    )

    assert response.status_code == 400
    assert "curves.roc.fpr" in error_fields(response)
    assert f"no more than {MAX_ROC_POINTS}" in error_fields(response)["curves.roc.fpr"][0]
    assert not SiteEvaluation.objects.filter(site__slug="agent-a").exists()


def test_a_curve_of_the_documented_size_is_accepted(agent, evaluation_url):
    points = monotone(MAX_ROC_POINTS)
    bins = monotone(MAX_CALIBRATION_BINS)
    curves = {
        "roc": {"fpr": points, "tpr": points},
        "calibration": {
            "mean_predicted": bins,
            "fraction_positive": bins,
            "count": [3.0] * MAX_CALIBRATION_BINS,
        },
    }

    response = agent.post(evaluation_url, {"metrics": {"accuracy": 0.8, "n": 40}, "curves": curves})

    assert response.status_code == 201, response.json()
    assert (
        len(SiteEvaluation.objects.get(site__slug="agent-a").curves["roc"]["fpr"]) == MAX_ROC_POINTS
    )


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"metrics": {"accuracy": 1.5}}, "metrics"),
        ({"metrics": {"auroc": -0.1}}, "metrics"),
        ({"metrics": {"log_loss": -1}}, "metrics"),
        ({"metrics": {"n": 2.5}}, "metrics"),
        ({"metrics": {"other": 1e300}}, "metrics"),
        ({"metrics": {"<b>x</b>": 0.5}}, "metrics"),
        (
            {
                "metrics": {"a": 1},
                "curves": {"roc": {"fpr": [0, 0.6, 0.4, 1], "tpr": [0, 0.5, 0.7, 1]}},
            },
            "curves.roc.fpr",
        ),
        (
            {
                "metrics": {"a": 1},
                "curves": {
                    "calibration": {
                        "mean_predicted": monotone(MAX_CALIBRATION_BINS + 1),
                        "fraction_positive": monotone(MAX_CALIBRATION_BINS + 1),
                        "count": [1.0] * (MAX_CALIBRATION_BINS + 1),
                    }
                },
            },
            "curves.calibration.mean_predicted",
        ),
    ],
)
def test_figures_outside_their_ranges_are_400_naming_the_field(
    agent, evaluation_url, payload, field
):
    response = agent.post(evaluation_url, payload)

    assert response.status_code == 400 and field in error_fields(response), response.json()
    assert not SiteEvaluation.objects.filter(site__slug="agent-a").exists()


def test_the_core_thins_a_long_roc_curve_to_the_limit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100_000)
    p = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, y.size))))

    full = roc_points(y, p, max_points=10**9)
    thin = roc_points(y, p)

    assert len(full["fpr"]) > MAX_ROC_POINTS >= len(thin["fpr"]) > MAX_ROC_POINTS - 5
    assert (thin["fpr"][0], thin["tpr"][0], thin["fpr"][-1], thin["tpr"][-1]) == (
        0.0,
        0.0,
        1.0,
        1.0,
    )
    assert np.all(np.diff(thin["fpr"]) >= 0) and np.all(np.diff(thin["tpr"]) >= 0)
    assert (
        abs(np.trapezoid(thin["tpr"], thin["fpr"]) - np.trapezoid(full["tpr"], full["fpr"])) < 1e-3
    )
