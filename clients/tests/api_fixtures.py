"""Fixtures for the REST API tests: token-authenticated clients for every persona.

Load with ``pytest_plugins = ["clients.tests.api_fixtures"]`` in a test module.
alice (site A member), bob (site B member), charlie (coordinator) come from the root
conftest; here each gets an API client with a personal token, and agent sites get
clients with site tokens.
"""

from __future__ import annotations

import io

import pytest
from rest_framework.test import APIClient

PERSONAS = ["alice", "bob", "charlie"]


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters live in the cache, which outlives a test's database."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def anon():
    return APIClient()


@pytest.fixture
def client_for(db):
    """``client_for(user_or_site)``: an APIClient sending a fresh token of that owner."""
    from clients.models import ApiToken, Site

    def make(owner) -> APIClient:
        _, raw = ApiToken.issue(**({"site": owner} if isinstance(owner, Site) else {"user": owner}))
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_token = raw
        return client

    return make


@pytest.fixture
def personas(alice, bob, charlie, client_for):
    """{"alice": client, "bob": client, "charlie": client}."""
    return {"alice": client_for(alice), "bob": client_for(bob), "charlie": client_for(charlie)}


@pytest.fixture
def agent_site(make_site):
    """An agent-mode site (its data stays on its own machine)."""
    return make_site("agent-a", mode="agent")


@pytest.fixture
def agent(agent_site, client_for):
    """An API client with agent_site's site token."""
    return client_for(agent_site)


@pytest.fixture
def csv_bytes():
    """``csv_bytes(rows, seed)``: a valid synthetic vitals CSV."""
    from fedhealth.ml.synthetic import generate_site

    def make(rows: int = 200, seed: int = 0) -> bytes:
        return generate_site(rows, seed=seed).to_csv(index=False).encode()

    return make


@pytest.fixture
def summary_of():
    """``summary_of(csv)``: the registration payload an agent would send for a CSV."""
    from fedhealth.agent.data import LocalData

    def make(data: bytes, name: str = "local.csv") -> dict:
        return LocalData.from_source(io.BytesIO(data)).registration(name)

    return make


@pytest.fixture
def remote_dataset(csv_bytes, summary_of):
    """``remote_dataset(site, rows, seed)``: a dataset registered the way an agent does,
    from a summary only (no file)."""
    from clients.services import register_remote_dataset

    def make(site, rows: int = 160, seed: int = 0):
        reg = summary_of(csv_bytes(rows, seed=seed))
        dataset, _ = register_remote_dataset(
            site, reg["schema"], reg["row_count"], reg["positive_count"], reg["stats"], reg["summary"]
        )
        return dataset

    return make


@pytest.fixture
def eager_celery():
    """Run Celery tasks inline (in-process tests with no worker)."""
    from fedhealth.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def study(site_a, site_b, make_dataset, make_experiment, drive):
    """Site A's two-round experiment, run to completion (site B takes no part), and a
    draft experiment over both sites. Needs ``drive`` (aggregation/tests/conftest.py)."""
    from aggregation import services

    ds_a, ds_b = make_dataset(site_a, rows=160, seed=1), make_dataset(site_b, rows=160, seed=2)
    done = make_experiment([ds_a], name="A only", num_rounds=2)
    services.start_experiment(done.pk)
    done = drive(done.pk)
    draft = make_experiment([ds_a, ds_b], name="A and B", num_rounds=2)
    return {"done": done, "draft": draft, "ds_a": ds_a, "ds_b": ds_b}
