"""A secure experiment run by a real Celery worker process (`manage.py worker`) over the
embedded filesystem broker: the phases' tasks go through dispatch and the sites' queues."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round, SecureRound
from tests.support import manage, process_env, wait_until, worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(900)]


def test_a_secure_experiment_completes_on_a_real_worker(settings, tmp_path, make_site, make_dataset, make_experiment):
    env = process_env(settings.MEDIA_ROOT) | {
        "CELERY_BROKER_URL": "filesystem://", "CELERY_FILESYSTEM_BROKER_DIR": str(tmp_path / "broker"),
    }
    datasets = [make_dataset(make_site(f"hospital-{i}"), rows=300, seed=20 + i) for i in range(3)]
    experiment = make_experiment(datasets, num_rounds=2, min_sites=2, secure_aggregation=True)
    w = worker(env, tmp_path)
    try:
        w.start()
        manage(env, "experiment", "start", str(experiment.pk))

        def done() -> bool:
            current = Experiment.objects.get(pk=experiment.pk)
            if current.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                pytest.fail(f"experiment {current.status}: {current.failure_reason}")
            return current.status == Experiment.Status.COMPLETED

        wait_until(done, timeout=300, what="the secure experiment", watch=[w])
        # the last dispatch (each site forgets the round) may still be in flight
        wait_until(lambda: all(not default_storage.listdir(f"datasets/{ds.site.slug}/secagg")[1] for ds in datasets),
                   timeout=60, what="the sites deleting their round secrets", watch=[w])
    finally:
        w.kill()
    assert sorted(ModelVersion.objects.filter(experiment=experiment).values_list("version", flat=True)) == [1, 2]
    for r in Round.objects.filter(experiment=experiment):
        assert r.status == Round.Status.COMPLETED and sorted(r.metrics["accepted"]) == [
            "hospital-0", "hospital-1", "hospital-2"]
        assert r.secure.phase == SecureRound.Phase.DONE
        assert set(r.secure.sites.values_list("last_phase", flat=True)) == {"unmask"}
    assert not ClientUpdate.objects.filter(round__experiment=experiment).exclude(weights_file="").exists()
    assert not default_storage.exists("updates") or not any(default_storage.listdir("updates"))
