"""Value ranges and the positive class as data, per experiment (issue 10).

Uploads keep a heart rate of 130 (flagged) and reject a heart rate of 0 (naming the row);
an experiment may carry its own schema, through the form or the creation service that the
API and the admin share; a dataset outside the experiment's hard limits is refused by name.
Undefined figures read "n/a"; a mean a site sees is withheld when fewer sites than the
figure limit define it.
"""

from __future__ import annotations

import copy
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from aggregation.policy.figures import version_figures
from aggregation.services.creation import ExperimentInvalid, create_experiment
from aggregation.services.sitework import record_evaluation
from aggregation.templatetags.figures import metric
from clients.models import Dataset
from clients.tests import conftest as web
from fedhealth.ml.schema import DEFAULT_SCHEMA

from .test_web_experiments import form_data

pytestmark = pytest.mark.django_db
world = web.world

HEADER = "heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
ROWS = "".join(f"{70 + i % 20},{115 + i % 20},{75 + i % 10},{96 + i % 4},{i % 2}\n" for i in range(30))


def upload(client, text: str):
    return client.post(reverse("dataset_upload"), {
        "name": "Ward 7", "policy": "reject",
        "file": SimpleUploadedFile(
            "vitals.csv", text.encode(), content_type="text/csv"),
    }, follow=True)


def test_heart_rate_130_and_spo2_88_are_kept_and_flagged(client, alice):
    client.force_login(alice)

    response = upload(client, HEADER + ROWS + "130,150,95,88,0\n")

    dataset = Dataset.objects.get()
    assert dataset.status == Dataset.Status.READY and dataset.row_count == 31
    assert dataset.summary["heart_rate"]["max"] == 130 and dataset.summary["spo2"]["min"] == 88
    report = dataset.validation_report
    assert report["counts"] == {"outside_expected": 2}
    assert [(w["line"], w["column"], w["value"]) for w in report["warnings"]] == [
        (32, "heart_rate", "130"), (32, "spo2", "88")]
    page = response.content.decode()
    assert "2 values outside the expected range kept and flagged" in page
    assert "Outside the expected range (kept)" in page and "kept, flagged for review" in page


def test_heart_rate_0_is_rejected_naming_row_field_and_value(client, alice):
    client.force_login(alice)

    rows = ROWS.splitlines(keepends=True)
    response = upload(client, HEADER + "".join(rows[:10]) + "0,120,80,98,1\n" + "".join(rows[10:]))

    page = response.content.decode()
    dataset = Dataset.objects.get()
    assert dataset.status == Dataset.Status.REJECTED and not dataset.file
    problem = next(p for p in response.context["report"]["problems"] if p["kind"] == "out_of_range")
    line = 12  # the header, ten rows, then this one
    assert (problem["line"], problem["column"], problem["value"]) == (line, "heart_rate", "0")
    assert f"line {line}, column &#x27;heart_rate&#x27;: value &#x27;0&#x27; is outside the hard limits" in page


def narrow(**limits) -> dict:
    schema = copy.deepcopy(DEFAULT_SCHEMA.to_dict())
    for f in schema["features"]:
        f.update(limits.get(f["name"], {}))
    return schema


def test_an_experiment_carries_its_own_ranges_and_positive_class(world):
    schema = narrow(heart_rate={"min": 55.0, "max": 110.0})
    schema["positive"] = {"value": 1, "name": "healthy", "other": "unwell"}

    experiment = create_experiment(name="Own ranges", datasets=[world.ds_a, world.ds_b], schema=schema,
                                   min_sites=2)

    assert experiment.schema == schema and experiment.schema_obj.positive_name == "healthy"
    assert experiment.train_config(seed=1).positive == 1  # the sites' figures follow it


def test_a_dataset_outside_the_experiments_hard_limits_is_refused_by_name(world):
    top = world.ds_a.summary["heart_rate"]["max"]
    schema = narrow(heart_rate={"max": 80.0, "hard_max": top - 1})

    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="Too strict", datasets=[world.ds_a, world.ds_b], schema=schema, min_sites=2)

    messages = " ".join(caught.value.errors["datasets"])
    assert f"dataset {world.ds_a.pk} ({world.site_a.slug}/" in messages
    assert f"heart_rate has values up to {top:g} bpm, above the experiment's hard limit {top - 1:g} bpm" in messages


def test_a_dataset_with_other_columns_is_refused(world):
    schema = {"features": [{"name": "age"}], "label": "healthy"}

    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="Other columns", datasets=[world.ds_a], schema=schema)

    assert "has a different schema from the experiment (columns heart_rate" in " ".join(caught.value.errors["datasets"])


def test_the_form_takes_a_schema_as_json(client, world):
    client.force_login(world.charlie)
    schema = narrow(spo2={"min": 88.0})

    ok = client.post(reverse("experiment_create"), form_data(world, schema=json.dumps(schema)))
    bad = client.post(reverse("experiment_create"), form_data(world, name="Bad", schema="{not json"))
    wrong = client.post(reverse("experiment_create"),
                        form_data(world, name="Wrong", schema=json.dumps(narrow(spo2={"hard_max": 101, "max": 102}))))

    assert ok.status_code == 302
    from aggregation.models import Experiment

    assert Experiment.objects.get(name="Winter cohort").schema["features"][3]["min"] == 88.0
    assert "The schema is not valid JSON" in bad.content.decode()
    assert "expected max 102 is outside the hard limit hard_max 101" in wrong.content.decode()
    assert not Experiment.objects.filter(name__in=["Bad", "Wrong"]).exists()


@pytest.mark.parametrize("value, text", [(None, "n/a"), (float("nan"), "n/a"), (float("inf"), "n/a"),
                                         ("0.5", "n/a"), (0.0, "0.000"), (0.81234, "0.812")])
def test_metric_filter_writes_na_never_nan_or_zero(value, text):
    assert metric(value) == text


def test_a_site_never_sees_a_mean_defined_at_fewer_sites_than_the_limit(world, make_site, make_dataset,
                                                                       make_experiment, settings, drive):
    from aggregation import services
    from aggregation.models import ModelVersion
    from aggregation.policy import version_metrics, viewer_of

    settings.FEDHEALTH_MIN_FIGURE_SITES = 3
    datasets = [world.ds_a, world.ds_b, make_dataset(make_site("third"), rows=200, seed=9)]
    experiment = make_experiment(datasets, num_rounds=1, local_epochs=1, min_sites=3)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)
    version = ModelVersion.objects.get(experiment=experiment)
    # Re-report: two sites with one class (AUROC undefined there), one with both.
    evaluations = {e.site_id: e.metrics for e in version.evaluations.all()}
    version.evaluations.all().delete()
    for i, (site_id, m) in enumerate(evaluations.items()):
        record_evaluation(version.pk, site_id, m | ({"auroc": float("nan")} if i else {}))
    version.refresh_from_db()

    figures = version_figures([version])[version.pk]
    site = version_metrics(viewer_of(world.alice), version, figures)
    coordinator = version_metrics(viewer_of(world.charlie), version, figures)

    assert coordinator["defined"]["auroc"] == 1 and coordinator["mean"]["auroc"] is not None
    assert site["final"] and site["mean"]["auroc"] is None and site["mean"]["accuracy"] is not None
    assert site["defined"]["auroc"] == 1
