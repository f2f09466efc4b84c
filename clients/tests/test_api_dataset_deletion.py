"""DELETE /api/v1/datasets/<id>/: a site admin's personal token deletes through the same
service as the page (clients/deletion.py); everyone else is refused, another site's
dataset is a 404, a dataset in a running experiment is a 409."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from aggregation.models import Experiment
from audit.models import AuditEvent
from clients.models import Dataset, Membership

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/datasets/"


@pytest.fixture
def dataset(site_a, make_dataset):
    return make_dataset(site_a, rows=90, seed=1)


def test_a_site_admin_deletes_over_the_api(client_for, make_user, site_a, dataset):
    admin = client_for(make_user("ada", site_a, Membership.Role.SITE_ADMIN))
    path = Path(settings.MEDIA_ROOT) / dataset.file.name
    response = admin.delete(f"{URL}{dataset.pk}/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "deleted" and body["row_count"] == 90
    assert not path.exists()
    assert (
        AuditEvent.objects.filter(kind="dataset_delete", target=f"dataset {dataset.pk}").count()
        == 1
    )
    again = admin.delete(f"{URL}{dataset.pk}/")
    assert again.status_code == 409 and again.json()["code"] == "conflict"


def test_everyone_else_is_refused(personas, client_for, make_user, site_b, dataset, agent):
    other_admin = client_for(make_user("bea", site_b, Membership.Role.SITE_ADMIN))
    assert (
        personas["alice"].delete(f"{URL}{dataset.pk}/").status_code == 403
    )  # a member of the site
    assert personas["charlie"].delete(f"{URL}{dataset.pk}/").status_code == 403  # the coordinator
    assert other_admin.delete(f"{URL}{dataset.pk}/").status_code == 404
    assert agent.delete(f"{URL}{dataset.pk}/").status_code in (403, 404)  # another site's agent
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY and dataset.file


def test_in_use_is_a_409_naming_the_experiment(
    client_for, make_user, site_a, dataset, make_experiment
):
    experiment = make_experiment([dataset], name="Live study")
    Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.RUNNING)
    admin = client_for(make_user("ada", site_a, Membership.Role.SITE_ADMIN))
    response = admin.delete(f"{URL}{dataset.pk}/")
    assert response.status_code == 409 and "Live study" in response.json()["detail"]
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY
