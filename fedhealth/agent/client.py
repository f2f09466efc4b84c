"""HTTP to the FedHealth API, with retries for what is transient.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff and
jitter (``Retry-After`` is honoured); other 4xx raise :class:`ApiError` at once. The
agent's POSTs are all safe to repeat (see aggregation/api/agent.py), so retrying a
request whose answer was lost is harmless.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict

log = logging.getLogger("fedhealth.agent")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """The server refused the request (4xx other than 429); not worth retrying."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"detail": str(body)[:500]}
        self.detail = str(self.body.get("detail", ""))
        self.errors = self.body.get("errors") or {}
        super().__init__(f"HTTP {status}: {self.detail}")


class Unavailable(Exception):
    """The server could not be reached (or kept failing) through every retry."""


class ApiClient:
    """A requests session bound to one server and token.

    ``retries`` extra attempts per request; the wait before attempt k (0-based) is
    ``min(backoff_max, backoff * 2**k)`` scaled by a random factor in [0.5, 1) so that
    many agents restarting together do not retry in lockstep. With the defaults (8
    retries, 0.5 s doubling, 30 s cap) a request keeps trying for about 2 minutes:
    long enough to ride out a server restart.
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        timeout: float = 60.0,
        retries: int = 8,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.base = server.rstrip("/") + "/api/v1"
        self.timeout = timeout
        self.retries, self.backoff, self.backoff_max = retries, backoff, backoff_max
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "fedhealth-site-agent/1"
        self._sleep, self._jitter = sleep, jitter

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return min(self.backoff_max, self.backoff * 2**attempt) * (0.5 + self._jitter() / 2)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send with retries; returns a 2xx response, raises ApiError or Unavailable."""
        url = self.base + path
        problem = ""
        for attempt in range(self.retries + 1):
            wait = self.delay(attempt)
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise ApiError(response.status_code, _body(response))
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    wait = max(wait, min(float(retry_after), self.backoff_max))
            if attempt < self.retries:
                log.warning(
                    "%s %s: %s; retrying in %.1fs (%d/%d)",
                    method,
                    path,
                    problem,
                    wait,
                    attempt + 1,
                    self.retries,
                )
                self._sleep(wait)
        raise Unavailable(f"{method} {path}: {problem} after {self.retries + 1} attempts")

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post_json(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()

    def get_bytes(self, path: str) -> tuple[bytes, CaseInsensitiveDict]:
        response = self.request("GET", path)
        return response.content, response.headers

    def post_form(
        self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]
    ) -> Any:
        return self.request("POST", path, data=fields, files=files).json()


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
