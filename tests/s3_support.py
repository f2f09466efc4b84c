"""moto's S3 server on a free loopback port in its own process, and the storage settings
fedhealth/settings.py builds for it (shared by the S3 storage and /readyz tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

BUCKET = "fedhealth-test"
REGION = "eu-west-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # On a loaded 2-core machine moto's start-up can take seconds, a probe can time out
        # rather than be refused, and the free port can be taken between the probe and
        # moto's bind: each is retried (on a fresh port) instead of failing the test.
        for _attempt in range(3):
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "moto_server"),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    requests.get(self.url, timeout=2)
                    return
                except requests.RequestException:
                    time.sleep(0.1)
            self.stop()
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def moto_server():
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_storage_setting(endpoint: str) -> dict:
    """STORAGES["default"] exactly as fedhealth/settings.py builds it with these variables."""
    env = (
        os.environ
        | CREDENTIALS
        | {
            "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
            "STORAGE_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": BUCKET,
            "AWS_S3_ENDPOINT_URL": endpoint,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_S3_ADDRESSING_STYLE": "path",
        }
    )
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.STORAGES['default']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout)
