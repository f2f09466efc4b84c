"""A site's home: its datasets, its experiments with local vs global figures, its updates."""

from __future__ import annotations

import pytest
from django.urls import reverse

from .conftest import A_ERROR, A_GLOBAL, A_LOCAL

pytestmark = pytest.mark.django_db


def test_site_home_shows_the_sites_datasets_experiments_and_updates(client, world):
    client.force_login(world.alice)

    response = client.get(reverse("site_home"))

    assert response.status_code == 200
    page = response.content.decode()
    assert world.ds_a.name in page and world.rejected_a.name in page
    assert "Rejected" in page and "Ready" in page
    assert str(world.ds_a.row_count) in page
    # Per-feature summary of the latest ready dataset.
    assert "heart_rate" in page and "systolic_bp" in page
    # Both experiments with the site's own local figures beside the global model's.
    for name in (world.shared.name, world.only_a.name):
        assert name in page
    assert f"{A_LOCAL['accuracy']:.3f}" in page and f"{A_GLOBAL['accuracy']:.3f}" in page
    # Its updates per round, with the error of the failed one.
    assert A_ERROR in page
    assert world.draft.name in page
    assert 'action="/datasets/upload/"' in page


def test_running_experiment_shows_a_live_progress_bar(client, world):
    world.draft.status = "running"
    world.draft.save()
    client.force_login(world.alice)

    page = client.get(reverse("site_home")).content.decode()

    assert f'data-live-url="{reverse("experiment_live", args=[world.draft.pk])}"' in page
    assert 'role="progressbar"' in page


def test_site_home_of_a_new_site_invites_an_upload(client, make_site, make_user):
    user = make_user("dora", make_site("dorset"))
    client.force_login(user)

    page = client.get(reverse("site_home")).content.decode()

    assert "No dataset yet" in page and "not part of any experiment yet" in page


def test_dataset_detail_of_a_rejected_upload_shows_its_report_to_the_site(client, world):
    client.force_login(world.alice)

    page = client.get(reverse("dataset_detail", args=[world.rejected_a.pk])).content.decode()

    assert "Validation report" in page and "Not a number" in page
    assert "Download the file" not in page  # nothing was stored


def test_feature_summary_follows_the_schema_order(client, world):
    client.force_login(world.alice)

    page = client.get(reverse("dataset_detail", args=[world.ds_a.pk])).content.decode()

    positions = [page.index(f"<code>{name}</code>") for name in ("heart_rate", "systolic_bp", "diastolic_bp", "spo2")]
    assert positions == sorted(positions)
