"""Data as hospitals have it, and honest figures (issue 10).

A referral centre whose patients all carry one label, and a site of 20 rows, take part
in a whole experiment; the metrics that need both classes are null at that site and
"n/a" on every page and export; means say over how many sites they are; points still
being scored are marked partial; a model worse than chance is said to be.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from django.urls import reverse

from aggregation.models import Experiment, ModelVersion, SiteEvaluation
from aggregation.services.sitework import record_evaluation
from clients.policy import join_problems
from clients.services import ingest_dataset
from fedhealth.ml.metrics import compute_metrics
from fedhealth.ml.synthetic import generate_site

UNDEFINED_AT_ONE_CLASS = ("auroc", "balanced_accuracy", "specificity")


def ingest(site, frame):
    result = ingest_dataset(site, io.BytesIO(frame.to_csv(index=False).encode()), name=f"{site.slug}.csv")
    assert result.ok, result.report.format()
    return result.dataset


@pytest.fixture
def referral_world(make_site, make_dataset, make_experiment):
    """Two mixed sites, a 20-row site (10 of each label) and a referral centre whose 30
    patients are all unhealthy (healthy = 0, the positive class)."""
    mixed = [make_dataset(make_site(f"general-{i}"), rows=200, seed=20 + i) for i in range(2)]
    small = ingest(make_site("clinic-small"), generate_site(20, seed=4, healthy_fraction=0.5))
    pool = generate_site(300, seed=7, healthy_fraction=0.2)
    referral = ingest(make_site("referral"), pool[pool.healthy == 0].head(30))
    assert (small.row_count, small.positive_count) == (20, 10)
    assert (referral.row_count, referral.positive_count) == (30, 0)
    report = referral.validation_report
    assert report["ok"] and report["counts"].get("single_class") == 1  # warned, not rejected
    datasets = [*mixed, small, referral]
    experiment = make_experiment(datasets, num_rounds=2, local_epochs=1, min_sites=4)
    return experiment, datasets


def test_a_single_label_site_and_a_20_row_site_may_join(referral_world):
    # The disclosure limits: 20 rows and 5 of each label the dataset has.
    _, datasets = referral_world
    assert [join_problems(d) for d in datasets] == [[], [], [], []]


def assert_single_label_figures(experiment: Experiment) -> None:
    """The referral site's figures: null where undefined, defined elsewhere; the mean is
    over the sites where each metric is defined."""
    versions = list(ModelVersion.objects.filter(experiment=experiment).order_by("version"))
    assert [v.version for v in versions] == [1, 2]
    for version in versions:
        evaluations = {e.site.slug: e.metrics for e in version.evaluations.select_related("site")}
        assert set(evaluations) == {"general-0", "general-1", "clinic-small", "referral"}
        referral = evaluations["referral"]
        assert all(referral[k] is None for k in UNDEFINED_AT_ONE_CLASS), referral
        assert 0.0 <= referral["sensitivity"] <= 1.0 and referral["accuracy"] == referral["sensitivity"]
        for slug in ("general-0", "general-1", "clinic-small"):
            assert all(isinstance(evaluations[slug][k], float) for k in UNDEFINED_AT_ONE_CLASS)
        assert version.metrics["defined"]["auroc"] == 3 and version.metrics["defined"]["accuracy"] == 4
        others = [evaluations[s]["auroc"] for s in ("general-0", "general-1", "clinic-small")]
        np.testing.assert_allclose(version.metrics["mean"]["auroc"], np.mean(others))


def test_a_single_label_site_runs_end_to_end_and_reads_na(client, charlie, referral_world, drive):
    experiment, _ = referral_world
    from aggregation import services

    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    assert_single_label_figures(experiment)
    # The referral site's local model trained and reported too (null where undefined).
    local = experiment.rounds.get(number=2).updates.get(site__slug="referral").metrics
    assert local["auroc"] is None and local["n"] > 0

    client.force_login(charlie)
    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    models = client.get(reverse("model_list", args=[experiment.pk])).content.decode()
    exported = client.get(reverse("experiment_export_metrics", args=[experiment.pk])).content.decode()
    api = client.get(f"/api/v1/experiments/{experiment.pk}/metrics/")
    for text in (page, models, exported, api.content.decode()):
        assert "nan" not in text.lower().replace("nano", "")  # never NaN, on any door
    # The site table on the experiment page, the analytics table and the CSV say n/a.
    referral_row = page[page.index('<th scope="row">Referral</th>'):]
    referral_row = referral_row[:referral_row.index("</tr>")]
    assert referral_row.count("n/a") >= 2 and "0.000" not in referral_row
    analytics = models[models.index("data-per-site"):]
    row = analytics[analytics.index('<th scope="row">Referral</th>'):]
    assert row[:row.index("</tr>")].count("n/a") == 3  # balanced accuracy, AUROC, specificity
    assert "mean over 3 of 4 sites" in models
    rows = [r for r in csv.DictReader(io.StringIO(exported)) if r["site"] == "referral"]
    assert rows and all(r["auroc"] == "n/a" and r["balanced_accuracy"] == "n/a" for r in rows)
    assert all(r["sensitivity"] not in ("", "n/a") for r in rows)
    # The API: null, and the mean says over how many sites.
    last = api.json()["rounds"][-1]
    assert last["per_site"]["referral"]["auroc"] is None and last["defined"]["auroc"] == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_single_label_site_on_a_real_hosted_worker(settings, tmp_path, referral_world):
    from tests.support import manage, process_env, wait_until, worker

    experiment, _ = referral_world
    env = process_env(settings.MEDIA_ROOT) | {
        "CELERY_BROKER_URL": "filesystem://", "CELERY_FILESYSTEM_BROKER_DIR": str(tmp_path / "broker")}
    w = worker(env, tmp_path)
    w.start()
    try:
        manage(env, "experiment", "start", str(experiment.pk))

        def finished() -> bool:
            e = Experiment.objects.get(pk=experiment.pk)
            if e.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                pytest.fail(f"experiment {e.status}: {e.failure_reason}")
            versions = ModelVersion.objects.filter(experiment=e)
            return e.status == Experiment.Status.COMPLETED and all(
                v.metrics.get("sites_reported") == 4 for v in versions)

        wait_until(finished, timeout=300, what="the experiment", watch=[w])
    finally:
        w.kill()
    assert_single_label_figures(Experiment.objects.get(pk=experiment.pk))


def test_a_round_still_being_scored_is_marked_partial(client, charlie, make_site, make_dataset,
                                                      make_experiment, drive):
    from aggregation import services

    datasets = [make_dataset(make_site(f"h-{i}"), rows=150, seed=i) for i in range(3)]
    experiment = make_experiment(datasets, num_rounds=1, local_epochs=1, min_sites=3)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    version = ModelVersion.objects.get(experiment=experiment)
    # One site's evaluation is still to come: undo it as if it had not arrived yet.
    SiteEvaluation.objects.filter(version=version, site__slug="h-2").delete()
    evaluations = list(version.evaluations.all())
    version.metrics = {"mean": evaluations[0].metrics, "sites_reported": 2,
                       "defined": {k: 2 for k in evaluations[0].metrics}}
    version.save(update_fields=["metrics"])
    client.force_login(charlie)

    data = client.get(reverse("experiment_live", args=[experiment.pk])).json()
    models = client.get(reverse("model_list", args=[experiment.pk])).content.decode()

    for key in ("balanced_accuracy", "auroc"):
        final, partial = data["figures"]["global"][key]["data"][:2]
        assert final["y"] == []  # not drawn as final
        assert partial["name"] == "Still being scored (partial)" and partial["x"] == [1]
        assert partial["text"] == ["partial: 2 of 3 sites"] and partial["marker"]["symbol"] == "circle-open"
    assert "partial: 2 of 3 sites" in models


def test_a_finished_model_worse_than_chance_is_flagged(client, charlie, alice, make_dataset, site_a, make_site,
                                                      make_experiment, drive):
    from aggregation import services

    datasets = [make_dataset(site_a, rows=150, seed=1)] + [
        make_dataset(make_site(f"h-{i}"), rows=150, seed=2 + i) for i in range(2)]
    experiment = make_experiment(datasets, num_rounds=1, local_epochs=1, min_sites=3)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    version = ModelVersion.objects.get(experiment=experiment)
    # The sites' evaluations of a model that ranks backwards (real metrics of inverted scores).
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    backwards = compute_metrics(y, np.clip(1 - y * 0.8 - rng.random(60) * 0.2, 0, 1), positive=0)
    SiteEvaluation.objects.filter(version=version).delete()
    for ds in datasets:
        record_evaluation(version.pk, ds.site_id, backwards)
    assert backwards["auroc"] < 0.5

    client.force_login(charlie)
    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    client.force_login(alice)
    home = client.get(reverse("site_home")).content.decode()

    assert "data-worse-than-chance" in page and "does worse than chance" in page
    assert "AUROC" in page[page.index("does worse than chance"):][:300]
    assert "data-below-chance" in home


def test_the_positive_class_is_named_on_every_figure(client, charlie, make_site, make_dataset, make_experiment,
                                                     drive):
    from aggregation import services

    datasets = [make_dataset(make_site(f"h-{i}"), rows=150, seed=i) for i in range(3)]
    experiment = make_experiment(datasets, num_rounds=1, local_epochs=1, min_sites=3)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    client.force_login(charlie)

    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    models = client.get(reverse("model_list", args=[experiment.pk])).content.decode()
    exported = client.get(reverse("experiment_export_json", args=[experiment.pk])).json()

    assert "Positive class: unhealthy (healthy = 0)" in page and "Prevalence:" in page
    assert "Sensitivity: unhealthy patients flagged" in models and "specificity: healthy patients passed" in models
    unhealthy = sum(d.row_count - d.positive_count for d in datasets) / sum(d.row_count for d in datasets)
    assert f"<span data-prevalence>{round(unhealthy * 100)}%</span>" in models
    assert f"Prevalence: {unhealthy:.0%} of patients are unhealthy" in page
    figures = json.loads(models[models.index('id="analytics-data"'):].split(">", 1)[1].split("</script>")[0])
    assert "unhealthy patients flagged" in figures["figures"]["roc"]["layout"]["yaxis"]["title"]["text"]
    assert "unhealthy (positive)" in figures["figures"]["confusion"]["data"][0]["x"]
    assert exported["experiment"]["positive_class"].startswith("Positive class: unhealthy")
    # The stored figures are the unhealthy class's: sensitivity is its recall, and the
    # confusion matrix's positives are the site's test rows with healthy = 0.
    from aggregation.services.sitework import site_split

    evaluation = SiteEvaluation.objects.filter(version__experiment=experiment).select_related("site").first()
    counts = evaluation.curves["confusion"]
    split = site_split(experiment, evaluation.site)
    assert counts["tp"] + counts["fn"] == int((split.y_test == 0).sum()) > 0
    np.testing.assert_allclose(evaluation.metrics["sensitivity"], counts["tp"] / (counts["tp"] + counts["fn"]))
