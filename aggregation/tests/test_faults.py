"""Faults with real processes: the broker unreachable from the web process and from a
worker, a worker stopped during a round, and a permanent aggregation failure; what the
coordinator and each site see, and that every case ends in a terminal state.

Workers are `manage.py worker` processes on real Redis (tests/support.py); a small TCP
link in front of Redis is cut to make the broker unreachable from one worker only,
while its messages stay queued in Redis. Heartbeats every second (alive for 3 s), the
sweeper every second, work re-sent after 3 quiet seconds: each test takes seconds.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import pytest
import redis
import requests
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from aggregation import services
from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round, WorkerHeartbeat
from aggregation.reasons import Reason
from tests.support import REDIS_URL as SHARED_REDIS_URL
from tests.support import Process, free_port, manage, process_env, wait_until, web_server, worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(600)]

# A Redis database of its own: other integration modules flush theirs (db 15) when
# they start, which must not take this module's queued messages away mid-test.
REDIS_URL = SHARED_REDIS_URL.rsplit("/", 1)[0] + "/13"
FAST = {"FEDHEALTH_HEARTBEAT_SECONDS": "1", "FEDHEALTH_STALE_SECONDS": "3", "FEDHEALTH_SWEEP_SECONDS": "1"}


@pytest.fixture
def redis_env(settings):
    # This process renders the pages: the same heartbeat timing as the workers.
    settings.FEDHEALTH_HEARTBEAT_SECONDS = 1
    settings.FEDHEALTH_HEARTBEAT_LIVE_SECONDS = 3
    settings.FEDHEALTH_STALE_SECONDS = 3
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield process_env(settings.MEDIA_ROOT, CELERY_BROKER_URL=REDIS_URL, **FAST)
    client.flushdb()


@pytest.fixture
def processes(tmp_path):
    started: list[Process] = []

    def start(process: Process) -> Process:
        started.append(process.start())
        return process

    yield start
    for p in started:
        p.kill()


def site_worker(env, log_dir, *slugs: str, name: str = "site-worker") -> Process:
    argv = worker(env, log_dir).argv
    argv = [a for a in argv if a != "--beat"] + [arg for s in slugs for arg in ("--site", s)]
    return Process(argv, env, log_dir, name)


def server_worker(env, log_dir) -> Process:
    return Process(worker(env, log_dir).argv + ["--server-only"], env, log_dir, "server-worker")


class BrokerLink:
    """A TCP link to Redis that the test can cut (open connections closed, new ones
    refused at once) and restore: the broker unreachable from one process only."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                if self.closed:  # closed while this connection was being made
                    client.close()
                    upstream.close()
                    continue
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        # The listener too: left open, it was collected during a later test's setup as an
        # unclosed socket (a ResourceWarning, an error under filterwarnings=error).
        with self.lock:
            self.closed = True
        self.acceptor.join(timeout=5)
        self.cut()
        self.listener.close()
        self.listener.close()


@pytest.fixture
def broker_link():
    host, port = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs["host"], 6379
    link = BrokerLink((host, redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs.get("port", port)))
    yield link
    link.close()


@pytest.fixture
def two_site_experiment(site_a, site_b, make_dataset, make_experiment):
    def make(rows: int = 200, **kwargs):
        datasets = [make_dataset(site_a, rows=rows, seed=1), make_dataset(site_b, rows=rows, seed=2)]
        return make_experiment(datasets, **({"num_rounds": 1, "min_sites": 2} | kwargs))

    return make


def heartbeat_age(queue: str) -> float | None:
    seen = WorkerHeartbeat.objects.filter(queue=queue).values_list("seen_at", flat=True).first()
    return None if seen is None else time.time() - seen.timestamp()


def beating(*queues: str) -> bool:
    return all((age := heartbeat_age(q)) is not None and age < 3 for q in queues)


def silent(*queues: str) -> bool:
    return all((age := heartbeat_age(q)) is None or age > 3 for q in queues)


def notices(client, user, experiment) -> tuple[str, str]:
    """The live page's progress fragment and the dashboard (coordinator) for ``user``."""
    client.force_login(user)
    live = client.get(reverse("experiment_live", args=[experiment.pk])).json()["html"]["progress"]
    dashboard = client.get(reverse("dashboard")).content.decode() if user.username == "charlie" else ""
    return live, dashboard


def assert_what_each_person_sees(client, experiment, alice, bob, charlie, *, unattended: set[str]) -> None:
    live, dashboard = notices(client, charlie, experiment)
    for name in unattended:
        assert f"No worker has taken {name}&#x27;s work for" in live
        assert f"No worker has taken {name}&#x27;s work for" in dashboard
    for user, own, other in ((alice, "Site A", "Site B"), (bob, "Site B", "Site A")):
        live, _ = notices(client, user, experiment)
        assert (f"No worker has taken {own}&#x27;s work for" in live) == (own in unattended)
        assert other not in live  # a site hears only about itself


def deadline_now(experiment) -> None:
    """The round's deadline arrives (a long one at the start: workers start slowly on a
    busy machine, and the round must not close before the test has looked)."""
    Round.objects.filter(experiment=experiment, status=Round.Status.OPEN).update(deadline=timezone.now())


def ended_without_worker(experiment) -> bool:
    return Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.FAILED


def assert_no_worker_ending(experiment, round_number: int) -> None:
    round_ = Round.objects.get(experiment=experiment, number=round_number)
    assert round_.status == Round.Status.FAILED and round_.failure_code == Reason.QUORUM
    codes = set(round_.updates.values_list("status", "error_code"))
    assert codes == {(ClientUpdate.Status.FAILED, Reason.NO_WORKER)}, codes
    experiment.refresh_from_db()
    assert experiment.failure_code == Reason.QUORUM


# -- the broker unreachable from the web process -----------------------------------------------

def test_start_with_the_broker_unreachable_from_the_web_then_the_sweeper_sends_the_work(
    redis_env, processes, two_site_experiment, charlie, tmp_path
):
    from clients.models import ApiToken

    experiment = two_site_experiment()
    closed = redis_env | {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/13", "SECURE_SSL_REDIRECT": "0"}
    port = free_port()
    web = processes(web_server(closed, tmp_path, port))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(url), timeout=120, what="the web server", watch=[web])
    _, token = ApiToken.issue(user=charlie)

    started = time.monotonic()
    response = requests.post(f"{url}/api/v1/experiments/{experiment.pk}/start/",
                             headers={"Authorization": f"Bearer {token}"}, timeout=120)

    assert time.monotonic() - started < 10  # a clear answer, not a hang
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running" and "broker could not be reached" in response.json()["notice"]
    round_ = Round.objects.get(experiment=experiment)
    assert set(round_.updates.values_list("status", flat=True)) == {ClientUpdate.Status.PENDING}
    assert redis.Redis.from_url(REDIS_URL).llen("site.site-a") == 0  # nothing was queued

    # A worker on the reachable broker: its sweeper sends the work once it is quiet.
    w = processes(worker(redis_env, tmp_path))
    wait_until(lambda: Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.COMPLETED,
               timeout=120, what="the experiment", watch=[w])
    assert ModelVersion.objects.filter(experiment=experiment).count() == 1
    assert list(round_.updates.values_list("attempts", flat=True)) == [1, 1]  # trained once each


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:  # not listening yet, or still loading the app
        return False


# -- the broker unreachable from a worker ----------------------------------------------------------

def test_a_worker_cut_off_from_the_broker_is_shown_and_its_sites_end_as_no_worker(
    redis_env, processes, broker_link, two_site_experiment, client, alice, bob, charlie, tmp_path
):
    experiment = two_site_experiment(round_timeout=600)
    linked = redis_env | {"CELERY_BROKER_URL": f"redis://127.0.0.1:{broker_link.port}/13"}
    server = processes(server_worker(redis_env, tmp_path))
    sites = processes(site_worker(linked, tmp_path, "site-a", "site-b"))
    wait_until(lambda: beating("site.site-a", "site.site-b", "server"), timeout=120, what="heartbeats",
               watch=[server, sites])

    broker_link.cut()
    wait_until(lambda: silent("site.site-a", "site.site-b"), timeout=120, what="the site worker's heartbeats to stop",
               watch=[sites])
    assert beating("server")  # the process is alive; only its broker is gone
    manage(redis_env, "experiment", "start", str(experiment.pk))
    wait_until(lambda: "No worker" in notices(client, charlie, experiment)[0], timeout=120,
               what="the notice", watch=[server])

    assert_what_each_person_sees(client, experiment, alice, bob, charlie, unattended={"Site A", "Site B"})
    assert redis.Redis.from_url(REDIS_URL).llen("site.site-a") >= 1  # still queued, nobody takes it
    deadline_now(experiment)
    wait_until(lambda: ended_without_worker(experiment), timeout=120, what="the deadline", watch=[server])
    assert_no_worker_ending(experiment, 1)

    broker_link.restore()  # the worker reconnects and beats again
    wait_until(lambda: beating("site.site-a", "site.site-b"), timeout=120, what="heartbeats to resume",
               watch=[sites])


# -- a worker stopped during a round ------------------------------------------------------------------

def test_a_worker_stopped_during_a_round(redis_env, processes, two_site_experiment, client, alice, bob, charlie,
                                         tmp_path):
    # Enough rows that training takes a few seconds: time to stop the worker in it.
    experiment = two_site_experiment(rows=8000, local_epochs=12, round_timeout=600)
    server = processes(server_worker(redis_env, tmp_path))
    manage(redis_env, "experiment", "start", str(experiment.pk))
    sites = processes(site_worker(redis_env, tmp_path, "site-a", "site-b"))
    wait_until(lambda: ClientUpdate.objects.filter(round__experiment=experiment, status="training").exists(),
               timeout=120, what="training", watch=[sites])
    assert beating("site.site-a", "site.site-b")

    sites.kill(signal.SIGKILL)
    assert ClientUpdate.objects.filter(round__experiment=experiment, status="training").exists()
    wait_until(lambda: "No worker" in notices(client, charlie, experiment)[0], timeout=120,
               what="the notice", watch=[server])

    assert_what_each_person_sees(client, experiment, alice, bob, charlie, unattended={"Site A", "Site B"})
    deadline_now(experiment)
    wait_until(lambda: ended_without_worker(experiment), timeout=120, what="the deadline", watch=[server])
    assert_no_worker_ending(experiment, 1)


# -- a permanent aggregation failure --------------------------------------------------------------------

def test_a_permanent_aggregation_failure_ends_the_round_and_the_sweeper_leaves_it(
    redis_env, processes, two_site_experiment, tmp_path
):
    experiment = two_site_experiment(num_rounds=2)
    # Trained here; this process's broker is in memory, so the aggregation message is
    # lost and only the worker's sweeper can send it.
    services.start_experiment(experiment.pk)
    for update_id in ClientUpdate.objects.filter(round__experiment=experiment).values_list("pk", flat=True):
        services.train_hosted_update(update_id)
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.status == Round.Status.AGGREGATING
    experiment.refresh_from_db()
    default_storage.delete(experiment.initial_weights)  # the global model it builds on is gone

    server = processes(server_worker(redis_env, tmp_path))
    wait_until(lambda: Round.objects.get(pk=round_.pk).status == Round.Status.FAILED, timeout=120,
               what="the round to fail", watch=[server])
    time.sleep(4)  # several sweeps, well past the 3 s after which quiet work is re-sent

    round_.refresh_from_db()
    experiment.refresh_from_db()
    assert round_.aggregation_attempts == 1
    assert (round_.failure_code, round_.failure_reason) == (Reason.INTERNAL, services_text(Reason.INTERNAL))
    assert experiment.status == Experiment.Status.FAILED
    assert not ModelVersion.objects.filter(experiment=experiment).exists()
    # The cause is in the log (all of it: the sweeps after the failure push it out of the tail).
    log = server.logs(tail=None)
    assert "FileNotFoundError" in log or "No such file" in log


def services_text(code: str) -> str:
    from aggregation.reasons import text

    return text(code)
