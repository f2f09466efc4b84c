"""Many site agents against one deployment: gunicorn and a Celery worker.

    python bench/bench_agents.py [--agents 100] [--rows 300] [--rounds 3] [--poll 5.0]
        [--database-url postgres://...] [--json PATH]

Each agent is the real client code (``fedhealth.agent``'s ``SiteAgent`` over its
``ApiClient``), one thread per site in this process, with its own site token and its
own generated CSV: it registers its dataset's summary, polls its assignments, claims,
downloads the global model, trains, uploads its weights and evaluates each version,
exactly as ``python -m fedhealth.agent`` does. The server is gunicorn (2 workers x 4
threads, as in docker-compose) and one `manage.py worker` process on Redis (which
aggregates); the database is SQLite in the work folder or an empty PostgreSQL
database given by ``--database-url`` (migrated here, not dropped).

Reported: whether every round completed with every agent's update and evaluation and
no failed request; each agent API call's latency (p50, p95, p99, overall and by
endpoint), measured around the agent's HTTP session; the server's CPU (gunicorn's and
the worker's process groups, from start to the last evaluation) per agent per round.
The agents' own training is in this process and not in the server's CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_orchestration as orch  # noqa: E402

ROOT = orch.ROOT


class TimedSession(requests.Session):
    """The agent's HTTP session, timing every request it sends (retries each count)."""

    def __init__(self, record) -> None:
        super().__init__()
        self._record = record

    def request(self, method, url, *args, **kwargs):
        started = time.perf_counter()
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException:
            self._record(method, url, None, time.perf_counter() - started)
            raise
        self._record(method, url, response.status_code, time.perf_counter() - started)
        return response


class Calls:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, int | None, float]] = []

    def record(self, method: str, url: str, status: int | None, seconds: float) -> None:
        path = re.sub(r"/\d+", "/{id}", url.split("/api/v1", 1)[-1].split("?", 1)[0])
        with self.lock:
            self.rows.append((f"{method} {path}", status, seconds))


class WarningCount(logging.Handler):
    """Counts what the agents log at WARNING or above (refusals, retries, failures)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def start_gunicorn(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, object]:
    port = _free_port()
    log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115  (closed with the process)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "fedhealth.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--threads", "4", "--timeout", "120"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url, log
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    server.wait()
    log.close()
    raise SystemExit(f"gunicorn did not start:\n{(tmp / 'gunicorn.log').read_text()[-3000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll", type=float, default=5.0, help="each agent's poll interval (s; the agent's default)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--database-url", help="an empty database to use instead of SQLite (migrated here)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fedhealth-bench-agents-"))
    print(f"work folder: {tmp}")
    os.environ.update({
        # Throttles off the path (the agents' polls are what is measured), logs quiet.
        "API_THROTTLE_RATE": "100000000/min", "API_AGENT_THROTTLE_RATE": "100000000/min",
        "LOG_LEVEL": "WARNING", "FEDHEALTH_LOG_LEVEL": "WARNING",
    })
    env = orch.configure(tmp, args.database_url)
    orch.setup_django()
    import redis
    import torch
    from django.db import connection

    from aggregation import services
    from aggregation.models import ClientUpdate, Experiment, ModelVersion
    from clients.models import ApiToken, Dataset, Site
    from fedhealth.agent.client import ApiClient
    from fedhealth.agent.data import LocalData
    from fedhealth.agent.loop import SiteAgent
    from fedhealth.ml.synthetic import generate_sites

    torch.set_num_threads(1)
    frames = generate_sites(args.agents, args.rows, seed=5)
    sites = []
    for name, frame in frames.items():
        site = Site.objects.create(name=name, slug=name, mode=Site.Mode.AGENT)
        token = ApiToken.issue(site=site, name="agent")[1]
        data = LocalData.from_source(io.BytesIO(frame.to_csv(index=False).encode()))
        sites.append((site, token, data))

    calls = Calls()
    warnings = WarningCount()
    logging.getLogger("fedhealth.agent").addHandler(warnings)
    load_before = orch.load_average()
    server, url, server_log = start_gunicorn(tmp, env)
    worker = orch.start_worker(tmp, env)
    stop = threading.Event()
    threads = []
    try:
        for site, token, data in sites:
            client = ApiClient(url, token, session=TimedSession(calls.record))
            agent = SiteAgent(client, data, name=f"{site.slug}.csv", poll_interval=args.poll)
            thread = threading.Thread(target=agent.run, kwargs={"stop": stop}, name=site.slug, daemon=True)
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + args.timeout
        while Dataset.objects.filter(site__mode=Site.Mode.AGENT).count() < args.agents:
            if time.monotonic() > deadline:
                raise SystemExit("the agents did not all register")
            time.sleep(0.5)
        registered = len(calls.rows)

        experiment, _ = orch.make_experiment(
            [(site, Dataset.objects.get(site=site), frames[site.slug]) for site, _, _ in sites],
            args.rounds, name="many agents", local_epochs=1,
        )
        server_cpu0 = orch.group_cpu_seconds(server.pid) + worker.cpu()
        agents_cpu0 = time.process_time()
        started = time.perf_counter()
        services.start_experiment(experiment.pk)
        while True:
            experiment.refresh_from_db()
            if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                raise SystemExit(f"experiment {experiment.status}: {experiment.failure_reason}")
            versions = list(ModelVersion.objects.filter(experiment=experiment))
            if experiment.status == Experiment.Status.COMPLETED and len(versions) == args.rounds and all(
                v.metrics.get("sites_reported") == args.agents for v in versions
            ):
                break
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the experiment")
            if server.poll() is not None or worker.proc.poll() is not None:
                raise SystemExit("gunicorn or the worker exited")
            time.sleep(0.5)
        wall = time.perf_counter() - started
        server_cpu = orch.group_cpu_seconds(server.pid) + worker.cpu() - server_cpu0
        agents_cpu = time.process_time() - agents_cpu0
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        orch.stop_worker(worker, graceful=False)
        os.killpg(server.pid, 9)
        server.wait()
        server_log.close()
    load_after = orch.load_average()

    received = ClientUpdate.objects.filter(round__experiment=experiment, status=ClientUpdate.Status.RECEIVED).count()
    failed_requests = [(k, s) for k, s, _ in calls.rows if s is None or s >= 400]
    during = calls.rows[registered:]
    latencies = [sec for _, s, sec in during if s is not None and s < 400]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for kind, status, sec in during:
        if status is not None and status < 400:
            by_kind[kind].append(sec)
    complete = received == args.agents * args.rounds and not failed_requests
    per_agent_round_ms = server_cpu / (args.agents * args.rounds) * 1000
    print(f"{args.agents} agents (threads, real agent client) x {args.rounds} rounds, {args.rows} rows each, "
          f"poll {args.poll:g} s; gunicorn 2x4 + one worker, {connection.vendor}; "
          f"load average {load_before} -> {load_after}")
    print(f"experiment: {wall:.1f} s; updates received {received} of {args.agents * args.rounds}; "
          f"failed requests {len(failed_requests)}; agent warnings {len(warnings.messages)}")
    print(f"agent API calls during the experiment: {len(latencies)}; latency p50 {percentile(latencies, 50) * 1000:.0f} ms, "
          f"p95 {percentile(latencies, 95) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms")
    for kind in sorted(by_kind, key=lambda k: -len(by_kind[k])):
        values = by_kind[kind]
        print(f"  {kind:<48} {len(values):6d} calls  p50 {percentile(values, 50) * 1000:6.0f} ms  "
              f"p99 {percentile(values, 99) * 1000:6.0f} ms")
    print(f"server CPU (gunicorn + worker): {server_cpu:.1f} s = {per_agent_round_ms:.1f} ms per agent per round; "
          f"agents' process CPU {agents_cpu:.1f} s")
    for message in warnings.messages[:10]:
        print(f"  agent warning: {message[:200]}")
    result = {
        "name": "agents",
        "results": {
            "agents": args.agents, "rounds": args.rounds, "rows": args.rows, "poll_s": args.poll,
            "database": connection.vendor, "wall_s": wall, "updates_received": received,
            "failed_requests": len(failed_requests), "agent_warnings": len(warnings.messages),
            "calls": len(latencies), "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "p99_s": percentile(latencies, 99),
            "by_endpoint": {k: {"calls": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
                            for k, v in by_kind.items()},
            "server_cpu_s": server_cpu, "server_cpu_ms_per_agent_round": per_agent_round_ms,
            "agents_cpu_s": agents_cpu, "load_average": {"before": load_before, "after": load_after},
        },
        "ratios": {},
        "targets": {},
        "pass": complete,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    redis.Redis.from_url(orch.REDIS_URL).flushdb()
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
