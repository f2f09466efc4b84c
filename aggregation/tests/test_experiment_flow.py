"""An experiment end to end through the services, in this process (no broker)."""

import json

import numpy as np
import pytest
from django.core.files.storage import default_storage

from aggregation import services
from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.reasons import Reason
from aggregation.reasons import text as reason_text
from aggregation.services import artifacts
from fedhealth.ml.weights_io import weights_from_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_sites(make_site, make_dataset):
    return [make_dataset(make_site(f"site-{i}"), rows=240, seed=i) for i in range(3)]


def test_three_rounds_produce_three_verified_versions(three_sites, make_experiment, drive):
    experiment = make_experiment(three_sites, num_rounds=3, local_epochs=3)

    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    versions = list(ModelVersion.objects.filter(experiment=experiment).order_by("version"))
    assert [v.version for v in versions] == [1, 2, 3]
    for v in versions:
        with default_storage.open(v.weights_file, "rb") as fh:
            weights_from_bytes(fh.read(), expected_sha256=v.sha256)  # raises on mismatch
        assert v.metrics["sites_reported"] == 3
        assert v.evaluations.count() == 3
    # The global model learns: the last version beats the first on the sites' test data.
    first, last = versions[0].metrics["mean"], versions[-1].metrics["mean"]
    assert last["loss"] < first["loss"]
    assert last["auroc"] > 0.75  # chance is 0.5
    for r in Round.objects.filter(experiment=experiment):
        assert r.status == Round.Status.COMPLETED
        received = r.updates.filter(status=ClientUpdate.Status.RECEIVED)
        assert received.count() == 3
        assert r.metrics["num_samples"] == sum(u.num_samples for u in received)
        assert sorted(r.metrics["accepted"]) == ["site-0", "site-1", "site-2"]
        for u in received:
            assert set(u.metrics) >= {"accuracy", "auroc"}


def test_log_has_one_line_per_event(three_sites, make_experiment, drive):
    experiment = make_experiment(three_sites, num_rounds=2)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)

    events = artifacts.read_log(experiment)

    kinds = [(e["event"], e["round"]) for e in events]
    assert kinds.count(("round_completed", 1)) == 1
    assert kinds.count(("round_completed", 2)) == 1
    assert ("evaluated", 2) in kinds and ("completed", 2) in kinds
    with default_storage.open(artifacts.log_name(experiment)) as fh:
        raw = fh.read().decode()
    assert all(json.loads(line) for line in raw.splitlines())


def test_rows_never_reach_the_server_side_records(three_sites, make_experiment, drive):
    experiment = make_experiment(three_sites, num_rounds=1)
    services.start_experiment(experiment.pk)
    drive(experiment.pk)

    # Everything the server stores about the round is aggregate: no field holds a
    # list as long as a site's rows.
    for record in [*Round.objects.values("metrics"), *ClientUpdate.objects.values("metrics")]:
        text = json.dumps(record)
        assert len(text) < 2000


def test_duplicate_training_and_aggregation_count_once(three_sites, make_experiment):
    experiment = make_experiment(three_sites, num_rounds=1)
    services.start_experiment(experiment.pk)
    updates = list(ClientUpdate.objects.filter(round__experiment=experiment))

    for u in updates:
        assert services.train_hosted_update(u.pk) == "submitted"
        assert services.train_hosted_update(u.pk).startswith("skipped")  # redelivered task
    round_ = Round.objects.get(experiment=experiment)
    first = services.aggregate_round(round_.pk)
    second = services.aggregate_round(round_.pk)

    assert first is not None and second is not None and first.pk == second.pk
    assert ModelVersion.objects.filter(experiment=experiment).count() == 1
    assert ClientUpdate.objects.filter(round=round_, status="received").count() == 3


def test_replayed_update_is_idempotent_and_a_different_one_refused(three_sites, make_experiment):
    experiment = make_experiment(three_sites[:2], num_rounds=2, min_sites=2)
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.filter(round__experiment=experiment).first()
    weights, _ = artifacts.global_weights_for(update.round)

    first = services.submit_update(update.pk, weights, num_samples=10, loss=0.5, metrics={}, source="agent")
    again = services.submit_update(update.pk, weights, num_samples=10, loss=0.5, metrics={}, source="agent")
    other = {k: v + 1 for k, v in weights.items()}

    assert not first.replayed and again.replayed
    with pytest.raises(services.UpdateRefused, match="already reported a different update"):
        services.submit_update(update.pk, other, num_samples=10, loss=0.5, metrics={}, source="agent")


@pytest.mark.parametrize("breakage, message", [
    (lambda w: {k: np.full_like(v, np.nan) for k, v in w.items()}, "NaN"),
    (lambda w: {k: v[..., :1] for k, v in w.items()}, "shape"),
    (lambda w: {k: v.astype(np.float64) for k, v in w.items()}, "dtype"),
    (lambda w: dict(list(w.items())[1:]), "missing"),
])
def test_malformed_update_refused_with_reason(three_sites, make_experiment, breakage, message):
    experiment = make_experiment(three_sites[:1], num_rounds=1)
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.get(round__experiment=experiment)
    weights, _ = artifacts.global_weights_for(update.round)

    with pytest.raises(services.UpdateRefused, match=message):
        services.submit_update(update.pk, breakage(weights), num_samples=5, loss=None, metrics={}, source="agent")
    update.refresh_from_db()
    assert update.status == ClientUpdate.Status.PENDING


def test_site_with_broken_data_is_left_out_with_its_reason(three_sites, make_experiment, drive):
    experiment = make_experiment(three_sites, num_rounds=1, min_sites=2)
    services.start_experiment(experiment.pk)
    broken = three_sites[1]
    # The stored file changes after validation (disk corruption, tampering).
    with default_storage.open(broken.file.name, "wb") as fh:
        fh.write(b"heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n1,2,3\n")

    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    failed = ClientUpdate.objects.get(round__experiment=experiment, site=broken.site)
    assert failed.status == ClientUpdate.Status.FAILED
    # The product's reason is shown (the worker checks the file before every task); the
    # cause (a checksum mismatch) is in the log only.
    assert failed.error_code == Reason.DATA_CHANGED and failed.error == reason_text(Reason.DATA_CHANGED)
    assert "SHA-256" not in failed.error
    round_ = Round.objects.get(experiment=experiment)
    assert sorted(round_.metrics["accepted"]) == ["site-0", "site-2"]
    assert any(r["site"] == "site-1" for r in round_.metrics["rejected"])


def test_round_without_quorum_fails_the_experiment(three_sites, make_experiment):
    experiment = make_experiment(three_sites[:2], num_rounds=1, min_sites=2)
    services.start_experiment(experiment.pk)
    a, b = ClientUpdate.objects.filter(round__experiment=experiment)

    services.train_hosted_update(a.pk)
    services.fail_update(b.pk, Reason.TRAINING_FAILED)

    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.FAILED
    assert "only 1 of the 2 sites required reported" in experiment.failure_reason


def test_deadline_closes_round_with_quorum(three_sites, make_experiment):
    from datetime import timedelta

    from django.utils import timezone

    experiment = make_experiment(three_sites, num_rounds=1, min_sites=2)
    services.start_experiment(experiment.pk)
    updates = list(ClientUpdate.objects.filter(round__experiment=experiment).order_by("site__slug"))
    services.train_hosted_update(updates[0].pk)
    services.train_hosted_update(updates[1].pk)
    round_ = updates[0].round

    assert services.maybe_close_round(round_.pk) == Round.Status.OPEN
    later = timezone.now() + timedelta(seconds=experiment.round_timeout + 1)
    assert services.maybe_close_round(round_.pk, now=later) == Round.Status.AGGREGATING

    late = ClientUpdate.objects.get(pk=updates[2].pk)
    assert late.status == ClientUpdate.Status.FAILED and "deadline" in late.error


def test_pause_holds_the_next_round_until_resumed(three_sites, make_experiment, drive):
    experiment = make_experiment(three_sites[:2], num_rounds=2)
    services.start_experiment(experiment.pk)
    services.pause_experiment(experiment.pk)

    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.PAUSED
    assert list(experiment.rounds.values_list("number", "status")) == [(1, "completed")]

    services.resume_experiment(experiment.pk)
    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED
    assert experiment.versions.count() == 2


def test_cancel_stops_everything(three_sites, make_experiment):
    experiment = make_experiment(three_sites[:2], num_rounds=2)
    services.start_experiment(experiment.pk)

    services.cancel_experiment(experiment.pk)

    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.CANCELLED
    assert not ClientUpdate.objects.filter(round__experiment=experiment, status="pending").exists()
    with pytest.raises(services.TransitionError):
        services.start_experiment(experiment.pk)


def test_start_refuses_without_enough_ready_sites(three_sites, make_experiment):
    experiment = make_experiment(three_sites[:1], min_sites=2)

    with pytest.raises(services.TransitionError, match="at least 2 are required"):
        services.start_experiment(experiment.pk)
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.DRAFT


@pytest.mark.parametrize("strategy", ["fedadam", "fedmedian", "fedprox"])
def test_other_strategies_persist_their_state(three_sites, make_experiment, drive, strategy):
    experiment = make_experiment(three_sites, num_rounds=2, strategy=strategy)
    services.start_experiment(experiment.pk)

    experiment = drive(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    if strategy == "fedadam":
        assert experiment.strategy_state["json"]["step"] == 2
        artifacts.load_weights(experiment.strategy_state_file, experiment.strategy_state["arrays_sha256"])


def test_a_task_for_a_deleted_object_does_nothing(three_sites, make_experiment):
    from aggregation import tasks

    experiment = make_experiment(three_sites[:1], num_rounds=1)
    services.start_experiment(experiment.pk)
    update_id = ClientUpdate.objects.get(round__experiment=experiment).pk
    round_id = Round.objects.get(experiment=experiment).pk
    experiment.delete()

    assert tasks.train_site.run(update_id).startswith("skipped")  # the claim finds no row
    assert tasks.aggregate_round.run(round_id) == "gone"
    assert tasks.evaluate_site.run(10**9, three_sites[0].site_id) == "gone"
