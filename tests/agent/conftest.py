"""Fixtures for the site-agent tests: agent sites with tokens and private CSVs."""

from __future__ import annotations

import pytest


@pytest.fixture
def agent_csv(tmp_path_factory):
    """``agent_csv(name, rows, seed)``: a CSV in its own temporary folder, outside
    MEDIA_ROOT, where only the agent reads it. Returns the path."""
    from fedhealth.ml.synthetic import generate_site

    def make(name: str, rows: int = 300, seed: int = 0):
        folder = tmp_path_factory.mktemp(f"site-{name}-private")
        path = folder / "local.csv"
        generate_site(rows, seed=seed).to_csv(path, index=False)
        return path

    return make


@pytest.fixture
def agent_sites(make_site):
    """Two agent-mode sites and their raw site tokens."""
    from clients.models import ApiToken

    sites = [make_site(f"remote-{i}", mode="agent") for i in range(2)]
    return [(site, ApiToken.issue(site=site, name="agent")[1]) for site in sites]


@pytest.fixture
def stack(settings, tmp_path):
    """A real deployment on loopback: gunicorn, a Celery worker (with beat) on Redis,
    and a recording proxy in front of gunicorn for the agents. Yields a namespace."""
    import types

    import redis

    from tests.agent.proxy import RecordingProxy
    from tests.support import REDIS_URL, free_port, process_env, wait_until, web_server, worker

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = process_env(settings.MEDIA_ROOT, CELERY_BROKER_URL=REDIS_URL)
    port = free_port()
    web, work = web_server(env, tmp_path, port), worker(env, tmp_path)
    started = []
    ns = types.SimpleNamespace(
        env=env,
        url=f"http://127.0.0.1:{port}",
        web=web,
        worker=work,
        log_dir=tmp_path,
        processes=started,
    )
    try:
        web.start()
        work.start()
        started += [web, work]

        def up() -> bool:
            import requests

            try:
                return requests.get(f"{ns.url}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=60, what="gunicorn", watch=[web])
        with RecordingProxy(port) as proxy:
            ns.proxy = proxy
            yield ns
    finally:
        for p in started:
            p.kill()
        client.flushdb()


@pytest.fixture
def start_agent(stack):
    """``start_agent(token, csv_path, name)``: the agent as its own process, through the proxy,
    with an environment holding nothing of the server's (no database, no media root)."""
    import os
    import sys

    from tests.support import ROOT, Process

    def start(token: str, path, name: str):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "FEDHEALTH_AGENT_TOKEN": token,
        }
        argv = [
            sys.executable,
            "-m",
            "fedhealth.agent",
            "--server",
            stack.proxy.url,
            "--data",
            str(path),
            "--poll-interval",
            "0.5",
        ]
        agent = Process(argv, env, stack.log_dir, name).start()
        stack.processes.append(agent)
        return agent

    return start
