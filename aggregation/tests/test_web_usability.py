"""The experiment, models and predict pages as a hospital user expects them (issue 13)."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.views import charts
from clients.tests import conftest as web

pytestmark = pytest.mark.django_db
world = web.world

PATIENT = {"heart_rate": "72", "systolic_bp": "118", "diastolic_bp": "76", "spo2": "98"}
ROOT = Path(__file__).resolve().parents[2]


def _running_with_a_newer_version(world) -> ModelVersion:
    """A running experiment whose mid-run version is newer than every finished one."""
    running = Experiment.objects.create(name="Still running", schema=world.shared.schema, num_rounds=5,
                                        status=Experiment.Status.RUNNING, started_at=timezone.now())
    running.participants.create(site=world.site_b, dataset=world.ds_b)
    round_ = Round.objects.create(experiment=running, number=1, status=Round.Status.COMPLETED,
                                  deadline=timezone.now(), completed_at=timezone.now())
    final = world.version
    mid = ModelVersion.objects.create(experiment=running, version=1, round=round_, weights_file=final.weights_file,
                                      sha256=final.sha256, normalizer=final.normalizer,
                                      model_config=final.model_config, schema=final.schema)
    ModelVersion.objects.filter(pk=mid.pk).update(created_at=final.created_at + timedelta(hours=1))
    return mid


# -- Predict -----------------------------------------------------------------------------


def test_the_picker_groups_versions_by_experiment_and_defaults_to_the_finished_ones_last(client, world):
    mid = _running_with_a_newer_version(world)
    client.force_login(world.charlie)

    page = client.get(reverse("predict")).content.decode()

    assert client.get(reverse("predict")).context["version"] == world.version  # not the newer mid-run one
    picker = page[page.index('name="version"'):page.index("</select>", page.index('name="version"'))]
    groups = re.findall(r'<optgroup label="([^"]+)">', picker)
    assert groups == ["Still running (running)", "Alderley internal pilot (failed)", "Shared vitals study (completed)"]
    selected = re.search(r'<option value="(\d+)"[^>]*selected>([^<]+)</option>', picker)
    assert selected.group(1) == str(world.version.pk)
    label = selected.group(2)
    assert label.startswith("v2 (recommended) · round 2 · ")
    assert world.version.created_at.strftime("%Y") in label and "AUROC 0." in label and "accuracy 0." in label
    assert f'<option value="{mid.pk}">v1 · round 1 · ' in picker and "recommended" not in picker.split(
        "</optgroup>")[0]  # a running experiment recommends nothing


def test_csv_results_show_the_files_id_column_and_the_same_percentages_as_the_single_result(client, world):
    client.force_login(world.bob)
    text = "patient_id,heart_rate,systolic_bp,diastolic_bp,spo2\nMRN-0042,72,118,76,98\n"
    upload = SimpleUploadedFile("patients.csv", text.encode(), content_type="text/csv")
    batch = client.post(reverse("predict"), {"mode": "csv", "csv-version": world.version.pk, "csv-file": upload,
                                             "output": "page"})
    single = client.post(reverse("predict"), {"mode": "single", "version": world.version.pk, **PATIENT})

    html = batch.content.decode()
    table = html[html.index("data-batch-results"):]
    assert ">patient_id</th>" in table and ">MRN-0042</th>" in table and ">Line</th>" not in table
    percent = single.context["single"]["percent"]
    assert re.fullmatch(r"[<>]?\d{1,3}\.\d%", percent)
    assert f"data-probability-cell>{percent}</td>" in table


def test_csv_results_without_an_id_column_number_the_lines(client, world):
    client.force_login(world.bob)
    text = "heart_rate,systolic_bp,diastolic_bp,spo2\n72,118,76,98\n"
    upload = SimpleUploadedFile("patients.csv", text.encode(), content_type="text/csv")
    html = client.post(reverse("predict"), {"mode": "csv", "csv-version": world.version.pk, "csv-file": upload,
                                            "output": "page"}).content.decode()

    assert ">Line</th>" in html and 'data-label="Line">2</th>' in html


def test_the_readme_predicts_with_the_demo_experiments_final_version():
    """seed_demo's experiment is the first one, one version per round (ids 1..N):
    the README's example must name version N, not the weakest, version 1."""
    demo = (ROOT / "aggregation/management/commands/seed_demo.py").read_text()
    rounds = int(re.search(r"num_rounds=(\d+)", demo).group(1))
    urls = re.findall(r"/api/v1/models/(\d+)/predict/", (ROOT / "README.md").read_text())

    assert urls and all(int(u) == rounds for u in urls)


# -- Models ------------------------------------------------------------------------------


def test_versions_show_their_date_and_the_recommended_one(client, world):
    client.force_login(world.charlie)
    html = client.get(reverse("model_list", args=[world.shared.pk])).content.decode()

    stamp = timezone.localtime(world.version.created_at).strftime("%Y-%m-%dT%H:%M:%S")
    assert f'<time datetime="{stamp}' in html
    assert f'?version={world.version.pk}">Predict with v2 (recommended)</a>' in html


def test_the_json_export_is_named_json(client, world):
    client.force_login(world.charlie)
    response = client.get(reverse("experiment_export_json", args=[world.shared.pk]))

    assert re.search(r'filename="[^"]+\.json"$', response["Content-Disposition"])


def test_log_csv_evaluated_rows_have_a_time_and_readable_details(client, world):
    from aggregation.services.sitework import record_evaluation

    v = world.version
    v.evaluations.all().delete()
    record_evaluation(v.pk, world.site_a.pk, {"accuracy": 0.9, "auroc": 0.95, "n": 40})
    record_evaluation(v.pk, world.site_b.pk, {"accuracy": 0.8, "auroc": 0.85, "n": 40})
    client.force_login(world.charlie)
    rows = list(csv.DictReader(io.StringIO(
        client.get(reverse("experiment_export_log", args=[world.shared.pk])).content.decode())))

    evaluated = [r for r in rows if r["event"] == "evaluated" and r["round"] == str(v.version)]
    assert len(evaluated) == 1
    assert timezone.datetime.fromisoformat(evaluated[0]["at"]).tzinfo is not None
    details = evaluated[0]["details"]
    assert not details.startswith("{") and "mean (accuracy: 0.85, auroc: 0.9" in details
    assert "version: 2" in details.split("; ")


# -- The experiment page ----------------------------------------------------------------------


def test_a_100_round_experiment_shows_every_round_of_every_site(client, world, make_experiment):
    experiment = make_experiment([world.ds_a, world.ds_b], name="Long study", num_rounds=100,
                                 status=Experiment.Status.RUNNING)
    now = timezone.now()
    for n in range(1, 101):
        round_ = Round.objects.create(experiment=experiment, number=n, status=Round.Status.COMPLETED, deadline=now)
        ClientUpdate.objects.create(round=round_, site=world.site_a, status=ClientUpdate.Status.RECEIVED)
        if n % 10:
            ClientUpdate.objects.create(round=round_, site=world.site_b, status=ClientUpdate.Status.RECEIVED)
    client.force_login(world.charlie)

    rounds = client.get(reverse("experiment_live", args=[experiment.pk])).json()["html"]["rounds"]

    assert rounds.count('<li class="cell cell-received"') == 190 and rounds.count('<li class="cell cell-none"') == 10
    assert 'title="Round 100: Received"' in rounds
    assert len(re.findall(r'<th scope="row" class="num" data-label="Round">\d+</th>', rounds)) == 100  # drill-down


def test_a_failed_updates_reason_is_written_out_not_only_in_a_tooltip(client, world):
    client.force_login(world.alice)
    html = client.get(reverse("experiment_live", args=[world.only_a.pk])).json()["html"]
    failed = ClientUpdate.objects.get(round__experiment=world.only_a, status=ClientUpdate.Status.FAILED)
    from aggregation import policy

    shown = policy.update(policy.viewer_of(world.alice), failed)["error"]

    listed = html["rounds"][html["rounds"].index("data-update-failures"):]
    assert shown and f"<strong>Round 2:</strong> {shown}" in listed
    assert "Alderley" not in listed.split("</ul>")[0].replace(shown, "")  # a site's own list names no site


def test_after_a_failure_the_progress_shows_the_reason_and_no_round_count(client, world):
    client.force_login(world.charlie)
    progress = client.get(reverse("experiment_live", args=[world.only_a.pk])).json()["html"]["progress"]

    assert "alert-error" in progress and "this round" not in progress


def test_reported_counts_arrived_updates_only_failed_ones_counted_apart(client, world, make_experiment):
    experiment = make_experiment([world.ds_a, world.ds_b], num_rounds=3, min_sites=2,
                                 status=Experiment.Status.RUNNING)
    round_ = Round.objects.create(experiment=experiment, number=1, status=Round.Status.OPEN,
                                  deadline=timezone.now() + timedelta(hours=1))
    ClientUpdate.objects.create(round=round_, site=world.site_a, status=ClientUpdate.Status.RECEIVED)
    ClientUpdate.objects.create(round=round_, site=world.site_b, status=ClientUpdate.Status.FAILED)
    url = reverse("experiment_live", args=[experiment.pk])

    client.force_login(world.charlie)
    coordinator = client.get(url).json()
    client.force_login(world.alice)
    site = client.get(url).json()

    assert coordinator["progress"]["text"] == "Round 1 of 3 · 1 of 2 sites reported · 1 failed"
    assert "1 of 2 sites reported · 1 failed" in coordinator["html"]["progress"]
    assert re.sub(r"<[^>]+>", "", coordinator["html"]["progress"]).count("of 2 sites") == 1  # said once, not twice
    # A site learns how many sites are done, never which failed.
    assert site["progress"]["text"] == "Round 1 of 3 · 2 of 2 sites done"
    assert site["progress"]["sites_failed"] == 0 and "failed" not in site["html"]["progress"]


def test_start_asks_for_confirmation_like_cancel(client, world):
    client.force_login(world.charlie)
    actions = client.get(reverse("experiment_live", args=[world.draft.pk])).json()["html"]["actions"]

    start = re.search(r'<form method="post" action="[^"]*/start/"([^>]*)>', actions).group(1)
    assert 'data-confirm="Start this experiment?' in start


def test_the_start_message_says_which_status_it_announces(client, world, settings):
    settings.CELERY_BROKER_URL = "memory://"
    client.force_login(world.charlie)
    page = client.post(reverse("experiment_start", args=[world.draft.pk]), follow=True).content.decode()

    assert re.search(r'<div class="alert alert-\w+" role="status" data-tags="announces:running">Experiment started', page)


def test_empty_charts_of_a_short_experiment_tick_whole_rounds_only():
    axis = charts.global_figures(2, [], {})["loss"]["layout"]["xaxis"]
    long_axis = charts.global_figures(100, [], {})["loss"]["layout"]["xaxis"]

    assert (axis["tickmode"], axis["tick0"], axis["dtick"]) == ("linear", 1, 1)
    assert long_axis["dtick"] == 10 and long_axis["tick0"] == 0


def test_bar_chart_site_names_wrap_in_their_tick_labels_only():
    fig = charts.site_comparison_figures([("Northgate Medical Centre", {"accuracy": 0.8}, {"accuracy": 0.9})])["accuracy"]

    assert fig["data"][0]["x"] == ["Northgate Medical Centre"]
    assert fig["layout"]["xaxis"]["ticktext"] == ["Northgate<br>Medical Centre"]


def test_numbers_and_words_in_the_configuration(client, world):
    Experiment.objects.filter(pk=world.shared.pk).update(weight_decay=1e-6)
    client.force_login(world.charlie)
    html = client.get(reverse("experiment_detail", args=[world.shared.pk])).content.decode()

    assert "learning rate 0.003, weight decay 0.000001</dd>" in html and "1e-06" not in html
    assert "<dt>Planned rounds</dt>" in html and ">Sites per round<" not in html.split('id="config-title"')[0]


def test_the_experiment_list_writes_out_why_an_experiment_failed(client, world):
    client.force_login(world.alice)
    html = client.get(reverse("experiment_list")).content.decode()

    from aggregation import policy

    why = policy.ending(policy.viewer_of(world.alice), world.only_a.failure_code, world.only_a.failure_reason,
                        world.only_a.status)["text"]
    assert f'<div class="small failure" data-failure>{why}</div>' in html


def test_rounds_is_a_field_of_the_form_not_also_a_section_heading(client, world):
    client.force_login(world.charlie)
    html = client.get(reverse("experiment_create")).content.decode()

    assert "<legend>Rounds</legend>" not in html and "Each round: who takes part, how long it waits" in html
    assert re.search(r'<label for="id_num_rounds">Rounds</label>', html)
