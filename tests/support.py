"""Helpers for tests that run real processes: Celery workers, web servers, agents.

The test process prepares the database (tests must use
``pytest.mark.django_db(transaction=True)`` so the other processes see committed rows),
starts processes with the same settings, and watches the database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("FEDHEALTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def database_url() -> str:
    """A DATABASE_URL for the test database this process uses."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def process_env(media_root: str, **extra: str) -> dict[str, str]:
    """Environment for a child process sharing this test's database and storage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": media_root,
        # Fast recovery in tests: sweep every second, re-queue work quiet for 8 s,
        # Redis re-delivers a dead worker's message after 10 s.
        "FEDHEALTH_SWEEP_SECONDS": "1",
        "FEDHEALTH_STALE_SECONDS": "8",
        "CELERY_VISIBILITY_TIMEOUT": "10",
        "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    return env


class Process:
    """A child process group that can be started, SIGKILLed and restarted."""

    def __init__(self, argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.argv, self.env, self.log_dir, self.name = argv, env, log_dir, name
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        with open(self.log_dir / f"{self.name}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def logs(self, tail: int | None = 4000) -> str:
        """The end of each run's log (for failure messages); ``tail=None``: all of it."""
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-(tail or 0):]
            for p in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )


def worker(env: dict[str, str], log_dir: Path, *extra: str) -> Process:
    """`manage.py worker --beat`: the server queue plus every hosted site's queue."""
    return Process(
        [sys.executable, "manage.py", "worker", "--beat", "--concurrency", "1", "--loglevel", "INFO", *extra],
        env, log_dir, "worker",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_server(env: dict[str, str], log_dir: Path, port: int) -> Process:
    """The real app under gunicorn (as in docker-compose), serving static via whitenoise."""
    return Process(
        [sys.executable, "-m", "gunicorn", "fedhealth.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--threads", "4", "--timeout", "120"],
        env, log_dir, "web",
    )


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, watch: list[Process] = ()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        for p in watch:
            if p.proc is not None and not p.alive():
                pytest.fail(f"{p.name} exited while waiting for {what}:\n{p.logs()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(p.logs() for p in watch))


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout
