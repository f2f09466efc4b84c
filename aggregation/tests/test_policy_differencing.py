"""The differencing test: with four sites, every figure site A can see (API metrics,
versions, rounds, live.json, the pages and every export) is recorded before and after
each single site's evaluation report. Another site's report changes nothing, except at
the one moment a version's final mean is published; a late report never moves it.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from fedhealth.ml.metrics import mean_metrics

from . import policy_world
from .policy_world import (
    GLOBAL,
    LOCAL,
    SAMPLES,
    VOLATILE,
    build_world,
    evaluate,
    metrics,
    time_passes,
)

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db
a_personas = policy_world.a_personas  # a fixture

SLUGS = ["ashgrove", "brackenridge", "culverton", "dunmore"]
ROUNDS = [
    {s: "accepted" for s in SLUGS},
    {
        "ashgrove": "accepted",
        "brackenridge": "accepted",
        "culverton": "accepted",
        "dunmore": "failed:no_worker",
    },
    {
        "ashgrove": "accepted",
        "brackenridge": "accepted",
        "culverton": "failed:training_failed",
        "dunmore": "failed:no_worker",
    },
]


@pytest.fixture
def quad(make_site, make_dataset, remote_dataset, make_experiment, a_personas):
    quad = build_world(
        make_site, make_dataset, remote_dataset, make_experiment, slugs=SLUGS, rounds=ROUNDS
    )
    a_personas(quad)
    return quad


def snapshot(quad) -> dict[str, str]:
    """Everything site A's member and agent token can read about the experiment."""
    e = quad.experiment.pk
    api = [
        f"/api/v1/experiments/{e}/",
        f"/api/v1/experiments/{e}/metrics/",
        "/api/v1/experiments/",
        "/api/v1/models/",
        f"/api/v1/rounds/?experiment={e}",
        f"/api/v1/updates/?experiment={e}",
        *(f"/api/v1/models/{v.pk}/" for v in quad.versions),
        *(f"/api/v1/rounds/{r.pk}/" for r in quad.rounds),
    ]
    web = [
        reverse(name, args=[e])
        for name in (
            "experiment_live",
            "experiment_detail",
            "model_list",
            "experiment_export_json",
            "experiment_export_metrics",
            "experiment_export_log",
        )
    ]
    web += [f"{reverse('model_list', args=[e])}?version={v.version}" for v in quad.versions]
    web += [reverse("predict"), reverse("site_home"), reverse("experiment_list")]
    member_web, member_api = quad.personas["member"]
    _, agent_api = quad.personas["agent"]
    out = {}
    for who, client, urls in (
        ("member", member_api, api),
        ("agent", agent_api, api),
        ("member", member_web, web),
    ):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            out[f"{who} {url}"] = VOLATILE.sub(r"\1…", response.content.decode())
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before if before[k] != after[k])


def defined(mean: dict) -> dict:
    """A published mean's defined figures: every metric the product knows is listed, the
    ones no site defined (this world reports no sensitivity, for one) as null."""
    return {k: v for k, v in mean.items() if v is not None}


def shown_to_a(quad, version) -> dict:
    return quad.personas["member"][1].get(f"/api/v1/models/{version.pk}/").json()["metrics"]


def test_the_snapshot_is_stable_and_would_see_a_figure(quad):
    first = snapshot(quad)
    assert changed(first, snapshot(quad)) == []  # nothing volatile is left in it
    evaluate(quad.versions[0], "ashgrove", quad.sites)
    assert changed(first, snapshot(quad)) != []  # A's own report shows: the snapshot sees figures


def test_no_single_report_of_another_site_changes_what_site_a_sees(quad):
    v1 = quad.versions[0]
    before = snapshot(quad)

    for slug in ("brackenridge", "culverton"):
        evaluate(v1, slug, quad.sites)
        after = snapshot(quad)
        assert changed(before, after) == [], f"{slug}'s report changed {changed(before, after)}"
    assert shown_to_a(quad, v1) == {"mean": {}, "sites_reported": 0, "final": False}

    evaluate(v1, "ashgrove", quad.sites)  # A's own: its own figures appear, still no mean
    before = snapshot(quad)
    assert shown_to_a(quad, v1) == {"mean": {}, "sites_reported": 0, "final": False}

    evaluate(v1, "dunmore", quad.sites)  # the last report: the final mean is published, once
    after = snapshot(quad)
    assert changed(before, after) != []
    published = shown_to_a(quad, v1)
    expected = mean_metrics([metrics(GLOBAL[s], SAMPLES[s] / 3) for s in SLUGS])
    assert published["final"] is True and published["sites_reported"] == 4
    assert defined(published["mean"]) == pytest.approx(expected)
    assert changed(after, snapshot(quad)) == []


def test_a_mean_published_at_the_deadline_never_moves(quad, settings):
    v2 = quad.versions[1]
    for slug in ("brackenridge", "culverton"):
        before = snapshot(quad)
        evaluate(v2, slug, quad.sites)
        assert changed(before, snapshot(quad)) == [], slug
    evaluate(v2, "ashgrove", quad.sites)
    before = snapshot(quad)

    # The evaluation deadline passes with three of four reports: published over three.
    time_passes(v2, settings.FEDHEALTH_EVALUATION_GRACE_SECONDS + 1)
    at_deadline = snapshot(quad)
    published = shown_to_a(quad, v2)
    assert changed(before, at_deadline) != [] and published["sites_reported"] == 3
    three = mean_metrics([metrics(GLOBAL[s], SAMPLES[s] / 3) for s in SLUGS[:3]])
    assert defined(published["mean"]) == pytest.approx(three)

    evaluate(v2, "dunmore", quad.sites)  # late: must not move the figure (the change would be D's)
    assert changed(at_deadline, snapshot(quad)) == []
    coordinator = quad.personas["coordinator"][1].get(f"/api/v1/models/{v2.pk}/").json()["metrics"]
    assert coordinator["sites_reported"] == 4  # the coordinator follows every report


def test_fewer_sites_than_the_threshold_never_publish(quad, settings):
    v3 = quad.versions[2]
    for slug in ("ashgrove", "brackenridge"):
        evaluate(v3, slug, quad.sites)
    time_passes(v3, settings.FEDHEALTH_EVALUATION_GRACE_SECONDS + 1)

    assert shown_to_a(quad, v3) == {"mean": {}, "sites_reported": 0, "final": False}
    settings.FEDHEALTH_MIN_FIGURE_SITES = 2
    assert shown_to_a(quad, v3)["sites_reported"] == 2  # the threshold is the setting


def test_round_sums_are_shown_only_when_no_two_differ_by_one_site(quad):
    """Round 1 combined all four sites, round 2 three, round 3 two. The sample total of
    round 2 minus round 1's would be dunmore's rows: only full rounds show a total, and
    only rounds with at least three sites show a training loss."""
    api = quad.personas["agent"][1]
    seen = {
        r["number"]: r["metrics"]
        for r in api.get(f"/api/v1/rounds/?experiment={quad.experiment.pk}").json()["results"]
    }

    assert seen[1]["num_samples"] == sum(SAMPLES.values()) and "train_loss" in seen[1]
    assert "num_samples" not in seen[2] and "train_loss" in seen[2]
    assert "num_samples" not in seen[3] and "train_loss" not in seen[3]
    assert seen[3]["accepted"] == ["ashgrove"] and seen[3]["rejected"] == []
    history = api.get(f"/api/v1/experiments/{quad.experiment.pk}/metrics/").json()["rounds"]
    assert [r["num_samples"] for r in history] == [sum(SAMPLES.values()), None, None]
    assert [r["train_loss"] is None for r in history] == [False, False, True]
    coordinator = (
        quad.personas["coordinator"][1]
        .get(f"/api/v1/rounds/{quad.rounds[2].pk}/")
        .json()["metrics"]
    )
    assert coordinator["num_samples"] == SAMPLES["ashgrove"] + SAMPLES["brackenridge"]
    assert coordinator["train_loss"] == pytest.approx(
        (
            LOCAL["ashgrove"]["loss"] * SAMPLES["ashgrove"]
            + LOCAL["brackenridge"]["loss"] * SAMPLES["brackenridge"]
        )
        / (SAMPLES["ashgrove"] + SAMPLES["brackenridge"])
    )


def test_a_site_given_up_closes_the_evaluations_and_its_late_report_moves_nothing(quad):
    from aggregation.models import EvaluationAttempt
    from aggregation.reasons import Reason

    v1 = quad.versions[0]
    for slug in ("brackenridge", "culverton", "ashgrove"):
        evaluate(v1, slug, quad.sites)
    before = snapshot(quad)

    EvaluationAttempt.objects.create(
        version=v1,
        site=quad.sites["dunmore"],
        status=EvaluationAttempt.Status.FAILED,
        attempts=3,
        error_code=Reason.EVALUATION_FAILED,
    )
    closed = snapshot(quad)
    assert changed(before, closed) != [] and shown_to_a(quad, v1)["sites_reported"] == 3

    evaluate(v1, "dunmore", quad.sites)
    assert changed(closed, snapshot(quad)) == []
