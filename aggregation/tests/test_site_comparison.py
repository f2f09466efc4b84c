"""Alone / global / personalised at each site (issue 10): the one door's bounds, the
end-of-experiment task that runs once, and the figures a single-label site gets."""

from __future__ import annotations

import math

import pytest

from aggregation import services, tasks
from aggregation.models import Experiment, SiteComparison
from aggregation.services.site_comparison import (
    SiteComparisonInvalid,
    check_figures,
    personal_name,
    record_site_comparison,
)
from fedhealth.files import read_bytes
from fedhealth.ml.weights_io import sha256_hex

from .test_heterogeneous_sites import referral_world  # noqa: F401 (a fixture)

GOOD = {"accuracy": 0.8, "balanced_accuracy": 0.75, "auroc": None, "n": 20.0, "loss": 0.4}


def figures(**changes):
    return {"alone": dict(GOOD), "global": dict(GOOD), "personalized": dict(GOOD), "mode": "fedper"} | changes


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (figures(alone={"accuracy": math.nan}), "alone"),
        (figures(alone={"accuracy": math.inf}), "alone"),
        (figures(**{"global": {"auroc": 1.5}}), "global"),
        (figures(personalized={"log_loss": -1.0}), "personalized"),
        (figures(personalized={"n": 2.5}), "personalized"),
        (figures(alone={"accuracy": True}), "alone"),
        (figures(alone={"secret_rows": 1.0}), "alone"),
        (figures(alone={}), "alone"),
        (figures(alone="0.9"), "alone"),
        (figures(mode="magic"), "mode"),
        (figures(mode=None), "mode"),  # personalised figures need their mode
        (figures(extra={"accuracy": 0.5}), "extra"),
        ({"alone": None, "global": None, "personalized": None}, "mode"),  # missing key
        (figures(version="3"), "version"),
    ],
)
def test_figures_out_of_bounds_are_refused_naming_the_field(bad, field):
    with pytest.raises(SiteComparisonInvalid) as refused:
        check_figures(bad)
    assert field in refused.value.errors


def test_clean_figures_list_every_metric_and_keep_undefined_as_null():
    clean = check_figures(figures(personalized=None, mode=None))
    assert clean["alone"]["auroc"] is None and clean["alone"]["specificity"] is None
    assert clean["alone"]["accuracy"] == 0.8 and clean["personalized"] is None


@pytest.fixture
def finished(make_site, make_dataset, make_experiment, drive):
    """A completed three-site experiment with FedPer and early stopping options set, run
    in this process; its comparisons opened at completion (not run yet)."""
    datasets = [make_dataset(make_site(f"site-{i}"), rows=120, seed=i) for i in range(3)]
    experiment = make_experiment(
        datasets, num_rounds=2, local_epochs=1, validation_fraction=0.2, personalize="fedper"
    )
    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    return experiment


def test_completion_opens_one_pending_comparison_per_hosted_site(finished):
    rows = SiteComparison.objects.filter(participant__experiment=finished)
    assert rows.count() == 3
    assert set(rows.values_list("status", "source")) == {("pending", "hosted")}


def test_the_task_compares_once_and_a_retry_finds_nothing_to_do(finished):
    row = SiteComparison.objects.filter(participant__experiment=finished).select_related("participant__site").first()
    assert tasks.compare_site.apply(args=[row.pk]).get() == "compared"
    row.refresh_from_db()
    assert row.status == "done" and row.attempts == 1 and row.mode == "fedper"
    for kind in ("alone", "global_metrics", "personalized"):
        metrics = getattr(row, kind)
        assert 0.0 <= metrics["balanced_accuracy"] <= 1.0 and 0.0 <= metrics["auroc"] <= 1.0
    assert row.version is not None
    # Both models went to the site's private storage, the personalised one checksummed.
    site = row.participant.site
    assert row.personal_file == personal_name(site, finished, "personal")
    assert row.personal_file.startswith(f"datasets/{site.slug}/")
    assert sha256_hex(read_bytes(row.personal_file)) == row.personal_sha256
    assert read_bytes(personal_name(site, finished, "local"))
    before = (row.alone, row.updated_at)
    # A redelivered or retried task: nothing to claim, nothing changes.
    assert tasks.compare_site.apply(args=[row.pk]).get() == "skipped: compared or given up"
    row.refresh_from_db()
    assert (row.alone, row.updated_at) == before and row.attempts == 1


def test_a_second_report_does_not_replace_the_first(finished):
    participant = finished.participants.first()
    with pytest.raises(SiteComparisonInvalid):  # a hosted site's figures come from its worker
        record_site_comparison(participant, figures(), source="agent")
    first = record_site_comparison(participant, figures(), source="hosted")
    again = record_site_comparison(participant, figures(alone={"accuracy": 0.1}), source="hosted")
    assert again.pk == first.pk and again.alone["accuracy"] == 0.8


def test_a_running_experiment_takes_no_comparison(make_site, make_dataset, make_experiment):
    experiment = make_experiment([make_dataset(make_site("site-x"), rows=60)])
    services.start_experiment(experiment.pk)
    with pytest.raises(SiteComparisonInvalid) as refused:
        record_site_comparison(experiment.participants.get(), figures(), source="agent")
    assert "experiment" in refused.value.errors
    assert not SiteComparison.objects.exists()


# -- options through every door ------------------------------------------------------


def test_every_door_takes_personalisation_and_early_stopping_within_bounds(make_site, make_dataset):
    from aggregation.services.creation import ExperimentInvalid, create_experiment

    dataset = make_dataset(make_site("site-o"), rows=120, seed=0)
    on = create_experiment(name="p", datasets=[dataset], personalize="on", validation_fraction=0.2,
                           early_stopping=3)
    assert (on.personalize, on.early_stopping) == ("fedper", 3)  # "on": the measured best
    off = create_experiment(name="q", datasets=[dataset])
    assert (off.personalize, off.early_stopping) == ("off", None)
    for bad, field in (
        ({"personalize": "magic"}, "personalize"),
        ({"validation_fraction": 0.2, "early_stopping": 0}, "early_stopping"),
        ({"validation_fraction": 0.2, "early_stopping": 1001}, "early_stopping"),
        ({"validation_fraction": 0.2, "early_stopping": 2.5}, "early_stopping"),
        ({"validation_fraction": 0.2, "early_stopping": math.nan}, "early_stopping"),
        ({"early_stopping": 3}, "early_stopping"),  # nothing to watch without a validation slice
    ):
        with pytest.raises(ExperimentInvalid) as refused:
            create_experiment(name="r", datasets=[dataset], **bad)
        assert field in refused.value.errors, bad


def test_the_api_and_the_form_take_the_options(client, charlie, make_site, make_dataset):
    from rest_framework.test import APIClient

    from aggregation.forms import ExperimentForm
    from clients.models import Dataset

    dataset = make_dataset(make_site("site-f"), rows=120, seed=0)
    api = APIClient()
    api.force_authenticate(charlie)
    base = {"name": "via api", "datasets": [dataset.pk], "validation_fraction": 0.2}
    made = api.post("/api/v1/experiments/", base | {"personalize": "ditto", "early_stopping": 2}, format="json")
    assert made.status_code == 201, made.json()
    body = api.get(f"/api/v1/experiments/{made.json()['id']}/").json()
    assert (body["personalize"], body["early_stopping"], body["comparison"]) == ("ditto", 2, None)
    refused = api.post("/api/v1/experiments/", base | {"early_stopping": 0}, format="json")
    assert refused.status_code == 400 and "early_stopping" in refused.json()["errors"]
    form = ExperimentForm(datasets=Dataset.objects.all())
    assert form.fields["early_stopping"].min_value == 1 and form.fields["early_stopping"].max_value == 1000
    assert [c for c, _ in form.fields["personalize"].choices] == ["off", "fedper", "finetune", "ditto"]


# -- platform early stopping ---------------------------------------------------------


def test_early_stopping_completes_the_experiment_with_its_reason(client, charlie, make_site, make_dataset,
                                                                 make_experiment, drive):
    from django.urls import reverse

    from aggregation.reasons import Reason
    from aggregation.reasons import text as reason_text
    from aggregation.services.selection import best_version

    datasets = [make_dataset(make_site(f"es-{i}"), rows=100, seed=i) for i in range(3)]
    # A learning rate this large makes the validation loss worse after round 1.
    experiment = make_experiment(datasets, num_rounds=12, validation_fraction=0.2, early_stopping=2, lr=0.3)
    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    assert experiment.finish_code == Reason.EARLY_STOPPED
    last = experiment.stopped_after_round
    assert last is not None and last < experiment.num_rounds
    assert experiment.rounds.count() == last  # no round opened after the stop
    # When round `last` was aggregated, versions up to last-1 were scored and the best was
    # at least `patience` versions behind; one round earlier it was not.
    scored = [v for v in experiment.versions.all() if v.version < last]
    assert last - 1 - best_version(scored).version >= 2
    assert (last - 2) - best_version([v for v in scored if v.version < last - 1]).version < 2
    # A retried aggregation of the last round finds it done: nothing moves.
    final = experiment.rounds.get(number=last)
    assert services.aggregate_round(final.pk).version == last
    assert experiment.rounds.count() == last
    assert SiteComparison.objects.filter(participant__experiment=experiment).count() == 3
    # The reason, shown on the page and in the API.
    client.force_login(charlie)
    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert "data-finish-reason" in page and f"stopped after round {last} of 12" in page
    assert reason_text(Reason.EARLY_STOPPED).split(":")[0] in page
    api = client.get(f"/api/v1/experiments/{experiment.pk}/").json()
    assert api["finish_code"] == "early_stopped" and api["stopped_after_round"] == last


# -- a single-label site, end to end, on its pages ----------------------------------


def test_a_single_label_site_gets_its_comparison_with_na(client, make_site, make_dataset, make_user,
                                                         make_experiment, drive):
    from django.urls import reverse

    from aggregation.tests.test_heterogeneous_sites import ingest
    from fedhealth.ml.synthetic import generate_site

    mixed = [make_dataset(make_site(f"mixed-{i}"), rows=150, seed=30 + i) for i in range(2)]
    pool = generate_site(300, seed=7, healthy_fraction=0.2)
    referral_site = make_site("referral")
    referral = ingest(referral_site, pool[pool.healthy == 0].head(40))
    experiment = make_experiment([*mixed, referral], num_rounds=2, validation_fraction=0.2,
                                 personalize="finetune", min_sites=3)
    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    for row in SiteComparison.objects.filter(participant__experiment=experiment):
        assert tasks.compare_site.apply(args=[row.pk]).get() == "compared"
    row = SiteComparison.objects.get(participant__site=referral_site)
    for kind in ("alone", "global_metrics", "personalized"):
        metrics = getattr(row, kind)
        assert metrics["balanced_accuracy"] is None and metrics["auroc"] is None, kind
        assert 0.0 <= metrics["accuracy"] <= 1.0

    member = make_user("ref-member", referral_site)
    client.force_login(member)
    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    section = page[page.index("data-comparison"):]
    section = section[:section.index("</section>")]
    assert 'data-comparison-row="personalized"' in section and "n/a" in section
    assert "nan" not in section.lower()
    home = client.get(reverse("site_home")).content.decode()
    assert "data-comparison" in home and "Alone (your rows only)" in home
    api = client.get(f"/api/v1/experiments/{experiment.pk}/").json()["comparison"]
    assert api["alone"]["auroc"] is None and api["status"] == "done"


def test_the_sweeper_resends_a_quiet_comparison_once_then_gives_it_up(finished, settings):
    from datetime import timedelta

    from django.utils import timezone

    from aggregation import sweeper
    from aggregation.budgets import COMPARE_SITE
    from aggregation.reasons import Reason

    rows = SiteComparison.objects.filter(participant__experiment=finished)
    assert sweeper.sweep()["comparisons"] == 0  # just opened: not quiet yet
    long_ago = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    first, second, third = rows.order_by("pk")
    rows.filter(pk=first.pk).update(updated_at=long_ago)
    # The broker is reachable in this test (filesystem transport): the quiet row is sent.
    assert sweeper.sweep()["comparisons"] == 1
    assert sweeper.sweep()["comparisons"] == 0  # touched when sent: once per quiet period
    rows.filter(pk=second.pk).update(updated_at=long_ago, attempts=COMPARE_SITE.attempts, status="running")
    sweeper.sweep()
    second.refresh_from_db()
    assert (second.status, second.error_code) == ("failed", Reason.ATTEMPTS_EXHAUSTED)
    third.refresh_from_db()
    assert third.status == "pending"


def test_a_site_predicts_with_its_own_personalised_model_and_no_other_site_can(client, finished, make_user):
    from django.urls import reverse

    rows = list(SiteComparison.objects.filter(participant__experiment=finished).select_related("participant__site"))
    mine, other = rows[0], rows[1]
    assert tasks.compare_site.apply(args=[mine.pk]).get() == "compared"
    version = finished.versions.order_by("-version").first()
    patient = {"heart_rate": "112", "systolic_bp": "150", "diastolic_bp": "95", "spo2": "91"}

    def ask(user, personal: bool):
        client.force_login(user)
        data = {"mode": "single", "version": version.pk, **patient} | ({"personal": "1"} if personal else {})
        return client.post(reverse("predict"), data)

    owner = make_user("owner", mine.participant.site)
    global_ = ask(owner, False)
    assert global_.context["personal_available"] is True and "data-personal-choice" in global_.content.decode()
    personal = ask(owner, True)
    assert personal.context["personal"] is True
    assert "personalised model of" in personal.content.decode()
    assert personal.context["single"]["probability"] != global_.context["single"]["probability"]
    # Another site (its own comparison not run yet) asking for "personal" gets the global model.
    stranger = ask(make_user("stranger", other.participant.site), True)
    assert stranger.context["personal"] is False and stranger.context["personal_available"] is False
    assert stranger.context["single"]["probability"] == global_.context["single"]["probability"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_real_hosted_worker_compares_every_site_once_with_a_single_label_site(settings, tmp_path, request):
    """The whole flow on a real worker process: rounds, completion, then each hosted
    site's compare_site task on its queue; the referral site (one label) reads n/a."""
    from tests.support import manage, process_env, wait_until, worker

    experiment, _ = request.getfixturevalue("referral_world")
    Experiment.objects.filter(pk=experiment.pk).update(personalize="fedper", validation_fraction=0.2)
    env = process_env(settings.MEDIA_ROOT) | {
        "CELERY_BROKER_URL": "filesystem://", "CELERY_FILESYSTEM_BROKER_DIR": str(tmp_path / "broker")}
    w = worker(env, tmp_path)
    w.start()
    try:
        manage(env, "experiment", "start", str(experiment.pk))

        def compared() -> bool:
            e = Experiment.objects.get(pk=experiment.pk)
            if e.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                pytest.fail(f"experiment {e.status}: {e.failure_reason}")
            rows = SiteComparison.objects.filter(participant__experiment=e)
            if rows.filter(status="failed").exists():
                pytest.fail(f"a comparison failed: {list(rows.values_list('error_code', flat=True))}")
            return e.status == Experiment.Status.COMPLETED and rows.count() == 4 and all(
                r.status == "done" for r in rows)

        wait_until(compared, timeout=600, what="the comparisons", watch=[w])
    finally:
        w.kill()
    rows = {r.participant.site.slug: r for r in SiteComparison.objects.select_related("participant__site")}
    assert all(r.attempts == 1 and r.mode == "fedper" and r.personal_sha256 for r in rows.values())
    referral = rows["referral"]
    assert referral.alone["auroc"] is None and referral.personalized["balanced_accuracy"] is None
    assert 0.0 <= referral.personalized["accuracy"] <= 1.0
    for slug in ("general-0", "general-1", "clinic-small"):
        assert 0.0 <= rows[slug].personalized["auroc"] <= 1.0


def test_a_comparison_waits_until_the_last_versions_evaluations_close(finished, settings):
    from aggregation.models import SiteEvaluation
    from aggregation.services.site_comparison import ready_to_compare
    from aggregation.tests.policy_world import time_passes

    latest = finished.versions.order_by("-version").first()
    rows = list(SiteComparison.objects.filter(participant__experiment=finished).select_related("participant"))
    waiting, late = rows[0], rows[1]
    # Another site's evaluation of the last version has not arrived: the selected version
    # is not settled, so the comparison waits (and is not counted as a try).
    SiteEvaluation.objects.filter(version=latest, site_id=late.participant.site_id).delete()
    assert ready_to_compare(waiting.pk) is False
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == ("pending", 0)
    # Its own missing evaluation the site does itself before deciding.
    SiteEvaluation.objects.filter(version=latest, site_id=waiting.participant.site_id).delete()
    assert ready_to_compare(waiting.pk) is False
    assert SiteEvaluation.objects.filter(version=latest, site_id=waiting.participant.site_id).exists()
    # Once the evaluation grace has passed the evaluations are closed: it goes ahead.
    time_passes(latest, settings.FEDHEALTH_EVALUATION_GRACE_SECONDS + 60)
    assert ready_to_compare(waiting.pk) is True


def test_the_coordinator_sees_nothing_aggregate_below_the_minimum_sites(client, charlie, finished):
    from django.urls import reverse

    rows = list(SiteComparison.objects.filter(participant__experiment=finished).order_by("pk"))
    for row in rows[:2]:
        assert tasks.compare_site.apply(args=[row.pk]).get() == "compared"
    client.force_login(charlie)
    shown = client.get(f"/api/v1/experiments/{finished.pk}/").json()["comparison"]
    assert shown["withheld"] is True and shown["reported"] == 2 and shown["sites"] == 3
    assert shown["mean"] is None and shown["global_worse_than_alone"] is None
    page = client.get(reverse("experiment_detail", args=[finished.pk])).content.decode()
    assert "data-comparison-withheld" in page and "2 of 3 sites have reported" in page
    assert "data-comparison-row" not in page
    assert tasks.compare_site.apply(args=[rows[2].pk]).get() == "compared"
    shown = client.get(f"/api/v1/experiments/{finished.pk}/").json()["comparison"]
    assert shown["withheld"] is False and shown["mean"]["personalized"]["balanced_accuracy"] is not None
