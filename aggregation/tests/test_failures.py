"""Failures with an end: attempt budgets, terminal states with their reasons, the
sweeper never re-sending what was given up, "no worker" notices, and the lifecycle
doors answering clearly when the broker cannot be reached.

In-process: the broker is unreachable for real (a closed port), the data breaks for
real (a deleted or rewritten file). Only a database outage in the middle of an
aggregation, which cannot be produced here, is simulated (monkeypatch).
"""

from __future__ import annotations

import io
import socket
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import OperationalError
from django.urls import reverse
from django.utils import timezone

from aggregation import dispatch, services, sweeper, tasks
from aggregation.budgets import AGGREGATE_ROUND, EVALUATE_SITE
from aggregation.models import ClientUpdate, EvaluationAttempt, Experiment, ModelVersion, Round
from aggregation.reasons import Reason
from aggregation.reasons import text as reason_text
from aggregation.services import health

pytest_plugins = ["clients.tests.api_fixtures"]


@pytest.fixture
def two_sites(site_a, site_b, make_dataset):
    return [make_dataset(site_a, rows=120, seed=1), make_dataset(site_b, rows=120, seed=2)]


def _trained_round(experiment) -> Round:
    """Start, and have every site report: the round is aggregating."""
    services.start_experiment(experiment.pk)
    for update_id in ClientUpdate.objects.filter(round__experiment=experiment).values_list("pk", flat=True):
        services.train_hosted_update(update_id)
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.status == Round.Status.AGGREGATING
    return round_


def _later(settings) -> timezone.datetime:
    return timezone.now() + timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 1)


# -- aggregation ----------------------------------------------------------------------

@pytest.mark.django_db
def test_a_permanent_aggregation_failure_fails_the_round_once_and_is_not_resent(two_sites, make_experiment, settings):
    experiment = make_experiment(two_sites, num_rounds=2, min_sites=2)
    round_ = _trained_round(experiment)
    experiment.refresh_from_db()
    default_storage.delete(experiment.initial_weights)  # the previous global model is gone

    assert tasks.aggregate_round.apply(args=[round_.pk]).get() == "failed"

    round_.refresh_from_db()
    experiment.refresh_from_db()
    assert round_.status == Round.Status.FAILED and round_.aggregation_attempts == 1
    assert round_.failure_code == Reason.INTERNAL and round_.failure_reason == reason_text(Reason.INTERNAL)
    assert "initial" not in round_.failure_reason and "safetensors" not in experiment.failure_reason
    assert experiment.status == Experiment.Status.FAILED and experiment.failure_code
    assert not ModelVersion.objects.filter(experiment=experiment).exists()
    # Neither the sweeper nor a redelivered message tries it again.
    counts = sweeper.sweep(now=_later(settings))
    assert counts["aggregations"] == 0 and counts["given_up"] == 0
    assert tasks.aggregate_round.apply(args=[round_.pk]).get() == "skipped: not aggregating"
    round_.refresh_from_db()
    assert round_.aggregation_attempts == 1


@pytest.mark.django_db
def test_a_transient_aggregation_failure_is_retried_until_its_budget_then_given_up(
    two_sites, make_experiment, settings, monkeypatch
):
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2)
    round_ = _trained_round(experiment)
    calls = []

    def database_gone(round_id):  # a database outage mid-aggregation cannot happen here
        calls.append(round_id)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "aggregate_round", database_gone)
    tasks.aggregate_round.apply(args=[round_.pk])  # eager: the retries run inline

    round_.refresh_from_db()
    assert len(calls) == AGGREGATE_ROUND.attempts == round_.aggregation_attempts
    assert round_.status == Round.Status.FAILED and round_.failure_code == Reason.AGGREGATION_FAILED
    assert "server closed" not in round_.failure_reason
    assert sweeper.sweep(now=_later(settings))["aggregations"] == 0


@pytest.mark.django_db
def test_the_sweeper_gives_up_an_aggregation_past_its_budget_instead_of_resending(two_sites, make_experiment, settings):
    # A worker killed during each try: the tries were counted, none finished.
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2)
    round_ = _trained_round(experiment)
    long_ago = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    Round.objects.filter(pk=round_.pk).update(aggregation_attempts=AGGREGATE_ROUND.attempts,
                                              aggregation_started_at=long_ago)

    counts = sweeper.sweep()

    round_.refresh_from_db()
    assert counts["aggregations"] == 0 and counts["given_up"] == 1
    assert round_.status == Round.Status.FAILED and round_.failure_code == Reason.AGGREGATION_FAILED


@pytest.mark.django_db
def test_a_slow_aggregation_is_not_resent_while_its_try_is_recent(two_sites, make_experiment, settings):
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2)
    round_ = _trained_round(experiment)
    long_ago = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    Round.objects.filter(pk=round_.pk).update(closed_at=long_ago, aggregation_attempts=1,
                                              aggregation_started_at=timezone.now())
    assert sweeper.sweep()["aggregations"] == 0
    Round.objects.filter(pk=round_.pk).update(aggregation_started_at=long_ago)
    assert sweeper.sweep()["aggregations"] == 1


@pytest.mark.django_db
def test_training_with_a_transient_failure_is_given_up_after_its_budget(two_sites, make_experiment, monkeypatch):
    from aggregation.budgets import TRAIN_SITE
    from aggregation.services.rounds import claim_update

    experiment = make_experiment(two_sites, num_rounds=1, min_sites=1)
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.filter(round__experiment=experiment).first()

    def claimed_then_database_gone(update_id):  # claims (counts a try), then the database drops
        claim_update(update_id)
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(services, "train_hosted_update", claimed_then_database_gone)
    tasks.train_site.apply(args=[update.pk])

    update.refresh_from_db()
    assert update.attempts == TRAIN_SITE.attempts
    assert (update.status, update.error_code) == ("failed", Reason.ATTEMPTS_EXHAUSTED)
    assert update.error == reason_text(Reason.ATTEMPTS_EXHAUSTED)


# -- evaluation -------------------------------------------------------------------------

@pytest.fixture
def evaluated_version(two_sites, make_experiment, settings):
    """A one-round experiment aggregated, version 1 evaluated at site A only, and made
    old enough for the sweeper to chase site B's evaluation."""
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2)
    round_ = _trained_round(experiment)
    version = services.aggregate_round(round_.pk)
    assert tasks.evaluate_site.apply(args=[version.pk, two_sites[0].site_id]).get() == "evaluated"
    old = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    ModelVersion.objects.filter(pk=version.pk).update(created_at=old)
    return version


@pytest.mark.django_db
def test_an_evaluation_that_fails_permanently_is_recorded_and_never_resent(evaluated_version, two_sites):
    broken = two_sites[1]
    with default_storage.open(broken.file.name, "wb") as fh:
        fh.write(b"heart_rate,systolic_bp\n1,2\n")

    result = tasks.evaluate_site.apply(args=[evaluated_version.pk, broken.site_id]).get()

    attempt = EvaluationAttempt.objects.get(version=evaluated_version, site=broken.site)
    assert result == "failed: site data"
    # The worker had the site's rows in hand: it notices that the file changed since.
    assert (attempt.status, attempt.attempts, attempt.error_code) == ("failed", 1, Reason.DATA_CHANGED)
    assert attempt.error == reason_text(Reason.DATA_CHANGED)
    assert sweeper.sweep()["evaluations"] == 0
    assert tasks.evaluate_site.apply(args=[evaluated_version.pk, broken.site_id]).get().startswith("skipped")
    attempt.refresh_from_db()
    assert attempt.attempts == 1


@pytest.mark.django_db
def test_a_missing_evaluation_is_resent_once_per_quiet_period_then_given_up(evaluated_version, two_sites, settings):
    site_b = two_sites[1].site
    assert sweeper.sweep()["evaluations"] == 1  # nobody has evaluated at site B: sent
    assert sweeper.sweep()["evaluations"] == 0  # just sent: not again at every sweep
    # Tried as often as the budget allows (workers died each time), quiet since.
    long_ago = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    EvaluationAttempt.objects.filter(version=evaluated_version, site=site_b).update(
        attempts=EVALUATE_SITE.attempts, updated_at=long_ago
    )

    counts = sweeper.sweep()

    attempt = EvaluationAttempt.objects.get(version=evaluated_version, site=site_b)
    assert counts["given_up"] == 1 and counts["evaluations"] == 0
    assert (attempt.status, attempt.error_code) == ("failed", Reason.ATTEMPTS_EXHAUSTED)


# -- site work and the deadline -------------------------------------------------------------

@pytest.mark.django_db
def test_at_the_deadline_a_site_without_a_live_worker_is_no_worker_not_missed_deadline(
    two_sites, make_experiment
):
    site_a, site_b = (d.site for d in two_sites)
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2, round_timeout=1)
    services.start_experiment(experiment.pk)
    health.record_heartbeat([site_a.queue], "worker-a")  # site A's worker is up but slow
    round_ = Round.objects.get(experiment=experiment)

    assert services.maybe_close_round(round_.pk, now=round_.deadline + timedelta(seconds=1)) == Round.Status.FAILED

    a, b = (ClientUpdate.objects.get(round=round_, site=s) for s in (site_a, site_b))
    assert (a.status, a.error_code, a.error) == ("failed", Reason.MISSED_DEADLINE, reason_text(Reason.MISSED_DEADLINE))
    assert (b.status, b.error_code, b.error) == ("failed", Reason.NO_WORKER, reason_text(Reason.NO_WORKER))
    round_.refresh_from_db()
    experiment.refresh_from_db()
    assert round_.failure_code == Reason.QUORUM and experiment.failure_code == Reason.QUORUM
    assert "only 0 of the 2 sites required reported before the deadline" in experiment.failure_reason


@pytest.mark.django_db
def test_the_sweeper_gives_up_site_work_past_its_budget_and_resends_only_to_attended_queues(
    two_sites, make_experiment, settings
):
    site_a, site_b = (d.site for d in two_sites)
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=1)
    services.start_experiment(experiment.pk)
    long_ago = timezone.now() - timedelta(seconds=settings.FEDHEALTH_STALE_SECONDS + 5)
    ClientUpdate.objects.filter(round__experiment=experiment).update(created_at=long_ago)
    ClientUpdate.objects.filter(round__experiment=experiment, site=site_b).update(
        status=ClientUpdate.Status.TRAINING, started_at=long_ago, attempts=3
    )
    health.record_heartbeat([site_a.queue, site_b.queue], "worker")

    counts = sweeper.sweep()

    b = ClientUpdate.objects.get(round__experiment=experiment, site=site_b)
    assert counts["training"] == 1 and counts["given_up"] == 1  # A re-sent, B given up
    assert (b.status, b.error_code) == ("failed", Reason.ATTEMPTS_EXHAUSTED)
    # Without a live worker on A's queue, a re-send would only pile up there.
    from aggregation.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update(seen_at=long_ago)
    assert sweeper.sweep()["training"] == 0


# -- what people see ----------------------------------------------------------------------

@pytest.fixture
def unattended(two_sites, make_experiment):
    """A running experiment whose sites' work no worker has taken for 5 minutes."""
    experiment = make_experiment(two_sites, num_rounds=1, min_sites=2)
    services.start_experiment(experiment.pk)
    ClientUpdate.objects.filter(round__experiment=experiment).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    return experiment


@pytest.mark.django_db
def test_the_live_page_says_no_worker_took_a_sites_work_to_that_site_and_the_coordinator(
    unattended, client, alice, bob, charlie
):
    url = reverse("experiment_live", args=[unattended.pk])
    seen = {}
    for user in (alice, bob, charlie):
        client.force_login(user)
        seen[user.username] = client.get(url).json()["html"]["progress"]

    assert "No worker has taken Site A&#x27;s work for 5 minutes." in seen["charlie"]
    assert "No worker has taken Site B&#x27;s work for 5 minutes." in seen["charlie"]
    assert "No worker has taken Site A&#x27;s work" in seen["alice"] and "Site B" not in seen["alice"]
    assert "No worker has taken Site B&#x27;s work" in seen["bob"] and "Site A" not in seen["bob"]


@pytest.mark.django_db
def test_the_dashboard_names_the_experiment_and_site_without_a_worker(unattended, client, charlie):
    client.force_login(charlie)
    page = client.get(reverse("dashboard")).content.decode()
    assert "test experiment, round 1: No worker has taken Site A&#x27;s work for 5 minutes." in page


@pytest.mark.django_db
def test_no_notice_while_a_worker_is_alive(unattended, client, charlie, two_sites):
    health.record_heartbeat([d.site.queue for d in two_sites], "worker")
    client.force_login(charlie)
    assert "No worker" not in client.get(reverse("experiment_live", args=[unattended.pk])).json()["html"]["progress"]


# -- the broker unreachable from this process ----------------------------------------------------

@pytest.fixture(params=["refused", "silent"])
def unreachable_broker(request, settings):
    """This process's Celery app pointed at a broker that cannot be reached, for real:
    a closed port ("refused"), or one that accepts connections and never answers
    ("silent": a hung or half-open broker), with the production timeouts for Redis."""
    from fedhealth.celery import app

    def repoint(url, options):
        app.conf.broker_url = url
        app.conf.broker_transport_options = options
        app._pool = None  # the connection pools are built from the URL on first use
        app.amqp._producer_pool = None

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if request.param == "refused":
        listener.close()
    previous = (app.conf.broker_url, app.conf.broker_transport_options)
    timeout = settings.FEDHEALTH_BROKER_TIMEOUT
    repoint(f"redis://127.0.0.1:{port}/0", {"socket_connect_timeout": timeout, "socket_timeout": timeout})
    started = time.monotonic()
    yield
    # Two tries, each giving up after the timeout (settings): the request never hangs.
    assert time.monotonic() - started < 4 * timeout + 5
    repoint(*previous)
    listener.close()


def _assert_started_but_not_queued(experiment):
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.RUNNING
    round_ = Round.objects.get(experiment=experiment)
    assert round_.status == Round.Status.OPEN
    assert set(round_.updates.values_list("status", flat=True)) == {ClientUpdate.Status.PENDING}


@pytest.mark.django_db(transaction=True)
def test_start_from_the_web_with_the_broker_unreachable_says_so(unreachable_broker, two_sites, make_experiment,
                                                                client, charlie):
    experiment = make_experiment(two_sites, num_rounds=1)
    client.force_login(charlie)

    response = client.post(reverse("experiment_start", args=[experiment.pk]), follow=True)

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert shown == [f"Experiment started: round 1 is open. {dispatch.UNSENT_NOTICE}"]
    _assert_started_but_not_queued(experiment)


@pytest.mark.django_db(transaction=True)
def test_start_from_the_api_with_the_broker_unreachable_answers_202_with_a_notice(
    unreachable_broker, two_sites, make_experiment, client_for, charlie
):
    experiment = make_experiment(two_sites, num_rounds=1)

    response = client_for(charlie).post(f"/api/v1/experiments/{experiment.pk}/start/")

    assert response.status_code == 202, response.content
    assert response.json()["status"] == "running" and response.json()["notice"] == dispatch.UNSENT_NOTICE
    _assert_started_but_not_queued(experiment)


@pytest.mark.django_db(transaction=True)
def test_the_experiment_command_with_the_broker_unreachable_says_so(unreachable_broker, two_sites, make_experiment):
    experiment = make_experiment(two_sites, num_rounds=1)
    out = io.StringIO()

    call_command("experiment", "start", str(experiment.pk), stdout=out)

    assert "running" in out.getvalue() and dispatch.UNSENT_NOTICE in out.getvalue()
    _assert_started_but_not_queued(experiment)


@pytest.mark.django_db(transaction=True)
def test_pause_resume_and_cancel_need_no_broker(unreachable_broker, two_sites, make_experiment, client, charlie):
    experiment = make_experiment(two_sites, num_rounds=2)
    services.start_experiment(experiment.pk)
    client.force_login(charlie)
    for action, status in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        response = client.post(reverse(f"experiment_{action}", args=[experiment.pk]), follow=True)
        assert response.status_code == 200
        assert [m.level_tag for m in response.context["messages"]] == ["success"], action
        experiment.refresh_from_db()
        assert experiment.status == status


def test_services_never_import_the_tasks():
    """Services decide what is due and call aggregation.dispatch on commit; only
    dispatch (lazily) and the tasks' own callers import aggregation.tasks."""
    import ast
    from pathlib import Path

    services_dir = Path(services.__file__).parent
    offenders = []
    for path in sorted(services_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                module = node.module or ""
                if module.endswith("tasks") or (node.level >= 2 and not module and "tasks" in names):
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.endswith(".tasks") for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.django_db
def test_healthz_stays_up_and_says_the_broker_is_unreachable_while_readyz_fails(unreachable_broker, client):
    """Liveness is not readiness: a restart cannot fix Redis, so /healthz stays 200, but
    its body names the outage; /readyz answers 503 naming the broker."""
    health = client.get("/healthz")
    ready = client.get("/readyz")

    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["broker"] == "unreachable"
    assert ready.status_code == 503 and "broker" in ready.content.decode()
