"""The agent's HTTP client: retries with backoff and jitter for what is transient only."""

from __future__ import annotations

import pytest
import requests

from fedhealth.agent.client import ApiClient, ApiError, Unavailable


class FakeSession(requests.Session):
    """Answers from a script: an exception to raise or (status, headers) to return."""

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = list(script), []

    def request(self, method, url, **kwargs):
        self.calls.append((method, url))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        status, headers = step
        response = requests.Response()
        response.status_code, response.headers = (
            status,
            requests.structures.CaseInsensitiveDict(headers),
        )
        response._content = b'{"detail": "nope", "code": "x", "errors": {"f": ["bad"]}}'
        return response


def client(script, **kwargs):
    sleeps: list[float] = []
    c = ApiClient(
        "http://127.0.0.1:9/",
        "fhs_x_y",
        session=FakeSession(script),
        sleep=sleeps.append,
        jitter=lambda: 0.0,
        **kwargs,
    )
    return c, sleeps


def test_connection_errors_5xx_and_429_are_retried_with_exponential_backoff():
    c, sleeps = client(
        [requests.ConnectionError(), (502, {}), requests.Timeout(), (429, {}), (200, {})],
        backoff=1.0,
        backoff_max=100,
    )

    assert c.request("GET", "/sites/").status_code == 200
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # backoff * 2**k, times a jitter factor in [0.5, 1)
    assert c.session.calls[0] == ("GET", "http://127.0.0.1:9/api/v1/sites/")


def test_jitter_spreads_retries_and_the_cap_holds():
    c = ApiClient("http://x", "t", backoff=1.0, backoff_max=8.0, jitter=lambda: 0.999)

    assert c.delay(0) == pytest.approx(0.9995) and c.delay(10) == pytest.approx(8 * 0.9995)


def test_retry_after_is_honoured():
    c, sleeps = client([(429, {"Retry-After": "7"}), (200, {})], backoff=0.1, backoff_max=30)

    c.request("GET", "/x/")

    assert sleeps == [7.0]


def test_client_errors_are_not_retried():
    c, sleeps = client([(409, {})])

    with pytest.raises(ApiError) as caught:
        c.request("POST", "/agent/rounds/1/claim/")

    assert (
        caught.value.status == 409
        and caught.value.detail == "nope"
        and caught.value.errors == {"f": ["bad"]}
    )
    assert sleeps == []


def test_giving_up_after_the_retry_budget_raises_unavailable():
    c, sleeps = client([requests.ConnectionError()] * 4, retries=3)

    with pytest.raises(Unavailable, match="4 attempts"):
        c.request("GET", "/x/")
    assert len(sleeps) == 3


def test_the_token_is_sent_as_a_bearer_header():
    c, _ = client([])

    assert c.session.headers["Authorization"] == "Bearer fhs_x_y"
