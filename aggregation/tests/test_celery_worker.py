"""Real Celery workers, in their own processes, run whole experiments.

The test process only prepares the database, starts workers (`manage.py worker`,
exactly as deployments do) and watches the database; everything else happens in the
workers, over real Redis or the embedded filesystem broker.
"""

from __future__ import annotations

import signal

import pytest
import redis
from kombu import Connection

from aggregation import tasks
from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.services import artifacts
from tests.support import REDIS_URL, Process, manage, process_env, wait_until, worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(900)]



@pytest.fixture
def worker_env(settings):
    return process_env(settings.MEDIA_ROOT)


@pytest.fixture
def redis_env(worker_env):
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield worker_env | {"CELERY_BROKER_URL": REDIS_URL}
    client.flushdb()


@pytest.fixture
def worker_factory(tmp_path):
    started: list[Process] = []

    def make(env):
        w = worker(env, tmp_path)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


def wait_for(predicate, *, timeout: float, worker: Process, what: str) -> None:
    wait_until(predicate, timeout=timeout, what=what, watch=[worker])


def finished(experiment_id: int, sites: int) -> bool:
    experiment = Experiment.objects.get(pk=experiment_id)
    if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
        pytest.fail(f"experiment {experiment.status}: {experiment.failure_reason}")
    versions = ModelVersion.objects.filter(experiment_id=experiment_id)
    return (
        experiment.status == Experiment.Status.COMPLETED
        and all(v.metrics.get("sites_reported") == sites for v in versions)
    )


def assert_complete_and_consistent(experiment: Experiment, rounds: int, sites: int) -> None:
    versions = list(ModelVersion.objects.filter(experiment=experiment).order_by("version"))
    assert [v.version for v in versions] == list(range(1, rounds + 1))
    for v in versions:
        artifacts.load_weights(v.weights_file, v.sha256)  # raises if corrupt
        assert len(v.metrics["mean"]) >= 9 and v.evaluations.count() == sites
    for r in Round.objects.filter(experiment=experiment):
        received = list(r.updates.filter(status=ClientUpdate.Status.RECEIVED))
        assert len(received) == sites, r.metrics
        assert len(r.metrics["accepted"]) == len(set(r.metrics["accepted"])) == sites
        assert r.metrics["num_samples"] == sum(u.num_samples for u in received)
    events = artifacts.read_log(experiment)
    completed = [e["round"] for e in events if e["event"] == "round_completed"]
    assert completed == list(range(1, rounds + 1))


@pytest.fixture
def experiment_3x3(make_site, make_dataset, make_experiment):
    def make(rows: int = 400, **kwargs):
        datasets = [make_dataset(make_site(f"hospital-{i}"), rows=rows, seed=10 + i) for i in range(3)]
        return make_experiment(datasets, num_rounds=3, min_sites=2, **kwargs)

    return make


def test_three_site_three_round_experiment_on_redis(redis_env, worker_factory, experiment_3x3):
    experiment = experiment_3x3()
    worker = worker_factory(redis_env)
    worker.start()

    manage(redis_env, "experiment", "start", str(experiment.pk))
    # Duplicate delivery: every round-1 training task is sent a second time.
    with Connection(REDIS_URL) as conn:
        for u in ClientUpdate.objects.filter(round__experiment=experiment).select_related("site"):
            tasks.train_site.apply_async(args=[u.pk], queue=u.site.queue, connection=conn)
    wait_for(lambda: finished(experiment.pk, 3), timeout=300, worker=worker, what="the experiment")

    experiment.refresh_from_db()
    assert_complete_and_consistent(experiment, rounds=3, sites=3)


def test_experiment_on_the_embedded_filesystem_broker(worker_env, worker_factory, experiment_3x3, tmp_path):
    env = worker_env | {"CELERY_BROKER_URL": "filesystem://", "CELERY_FILESYSTEM_BROKER_DIR": str(tmp_path / "broker")}
    experiment = experiment_3x3()
    worker = worker_factory(env)
    worker.start()

    manage(env, "experiment", "start", str(experiment.pk))
    wait_for(lambda: finished(experiment.pk, 3), timeout=300, worker=worker, what="the experiment")

    experiment.refresh_from_db()
    assert_complete_and_consistent(experiment, rounds=3, sites=3)


def test_worker_killed_mid_round_resumes_without_double_counting(redis_env, worker_factory, experiment_3x3):
    # Large enough sites that local training takes a few seconds: time to kill it.
    experiment = experiment_3x3(rows=16000, local_epochs=4)
    worker = worker_factory(redis_env)
    worker.start()
    manage(redis_env, "experiment", "start", str(experiment.pk))

    def training_in_round_2() -> bool:
        return ClientUpdate.objects.filter(
            round__experiment=experiment, round__number=2, status=ClientUpdate.Status.TRAINING
        ).exists()

    wait_for(training_in_round_2, timeout=300, worker=worker, what="round 2 training")
    worker.kill(signal.SIGKILL)
    interrupted = ClientUpdate.objects.filter(
        round__experiment=experiment, round__number=2, status=ClientUpdate.Status.TRAINING
    ).values_list("pk", flat=True)
    assert interrupted, "the kill should land while a site is training"

    worker.start()
    wait_for(lambda: finished(experiment.pk, 3), timeout=400, worker=worker, what="recovery")

    experiment.refresh_from_db()
    assert_complete_and_consistent(experiment, rounds=3, sites=3)
    retried = ClientUpdate.objects.filter(pk__in=list(interrupted))
    assert all(u.attempts >= 2 and u.status == ClientUpdate.Status.RECEIVED for u in retried)
