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
