"""Fixtures shared by every test: isolated storage, the three personas, sites with data.

The personas follow healthchecks' alice/bob/charlie: a member of site A, a member of
site B, and a coordinator. Every view and endpoint is checked against all three.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# whitenoise warns (an error under -W error) when STATIC_ROOT does not exist yet.
(ROOT / "var" / "staticfiles").mkdir(parents=True, exist_ok=True)


def pytest_configure(config):
    """A new database connection per request in this process, Django's own default.

    The product keeps connections (DATABASE_CONN_MAX_AGE, 60 s). In the test process the
    live server answers each keep-alive HTTP connection in its own thread, so an agent's
    idle HTTP session kept that thread's PostgreSQL session open for the rest of the run:
    the browser tests' wait for the servers' sessions to end timed out, and the test
    database could not be dropped. The servers that real-process tests start keep the
    product's setting. Runs after pytest-django's setup, before any connection opens.
    """
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """As in the workers: on a loaded 2-core machine torch's thread pool makes this small
    model train an order of magnitude slower than one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _private_media(request, tmp_path):
    """Each test writes datasets, models and logs under its own temporary MEDIA_ROOT."""
    if "settings" in request.fixturenames or request.node.get_closest_marker("django_db"):
        settings = request.getfixturevalue("settings")
        settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def make_site(db):
    from clients.models import Site

    def make(slug: str, **kwargs) -> Site:
        return Site.objects.create(name=kwargs.pop("name", slug.replace("-", " ").title()), slug=slug, **kwargs)

    return make


@pytest.fixture
def make_user(db, django_user_model):
    from clients.models import Membership

    def make(username: str, site=None, role: str | None = None):
        user = django_user_model.objects.create_user(username, password="pw-" + username)
        role = role or (Membership.Role.MEMBER if site else Membership.Role.COORDINATOR)
        Membership.objects.create(user=user, site=site, role=role)
        return user

    return make


@pytest.fixture
def make_dataset(db):
    """A ready dataset of synthetic vitals, ingested through the real upload path."""
    from clients.services import ingest_dataset
    from fedhealth.ml.synthetic import generate_site

    def make(site, rows: int = 300, seed: int = 0, **kwargs):
        frame = generate_site(rows, seed=seed, **kwargs)
        result = ingest_dataset(site, io.BytesIO(frame.to_csv(index=False).encode()), name=f"{site.slug}.csv")
        assert result.ok, result.report.format()
        return result.dataset

    return make


@pytest.fixture
def make_experiment(db):
    from aggregation.models import Experiment, Participant
    from fedhealth.ml.schema import DEFAULT_SCHEMA

    def make(datasets, consent: bool = True, **kwargs):
        """``consent=False``: the sites are invited but have not accepted (consent tests)."""
        from aggregation.services.consent import record_acceptance

        fields = {"name": "test experiment", "schema": DEFAULT_SCHEMA.to_dict(), "num_rounds": 3,
                  "local_epochs": 1, "min_sites": 1, "seed": 1} | kwargs
        experiment = Experiment.objects.create(**fields)
        invited = [Participant.objects.create(experiment=experiment, site=ds.site, dataset=ds) for ds in datasets]
        if consent:  # each site's admin accepts, through the consent service
            for participant in invited:
                record_acceptance(participant)
        return experiment

    return make


@pytest.fixture
def site_a(make_site):
    return make_site("site-a")


@pytest.fixture
def site_b(make_site):
    return make_site("site-b")


@pytest.fixture
def alice(make_user, site_a):
    """A member of site A."""
    return make_user("alice", site_a)


@pytest.fixture
def bob(make_user, site_b):
    """A member of site B."""
    return make_user("bob", site_b)


@pytest.fixture
def charlie(make_user):
    """A coordinator: aggregate figures only, no site's data."""
    return make_user("charlie")
