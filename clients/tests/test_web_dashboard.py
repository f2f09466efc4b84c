"""The coordinator's dashboard: sites with aggregate figures, experiments with status."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_dashboard_lists_sites_with_sizes_and_label_balance(client, world):
    client.force_login(world.charlie)

    response = client.get(reverse("dashboard"))

    assert response.status_code == 200
    sites = {s.name: s for s in response.context["sites"]}
    a = sites[world.site_a.name]
    assert (a.ready_datasets, a.rows, a.positives) == (1, world.ds_a.row_count, world.ds_a.positive_count)
    assert a.members == 1
    page = response.content.decode()
    assert f"{round(100 * world.ds_a.label_balance)}%" in page
    for experiment in (world.shared, world.only_a, world.draft):
        assert experiment.name in page
    assert "Completed · 2 of 2 rounds" in page and "Failed in round 2 of 2" in page


def test_dashboard_sums_only_ready_datasets_in_use(client, world, make_dataset, make_site):
    make_dataset(world.site_b, rows=120, seed=9)  # ready, but no experiment uses it
    newcomer = make_site("newcomer")
    make_dataset(newcomer, rows=150, seed=10)  # a site in no experiment yet: its ready data counts
    client.force_login(charlie := world.charlie)

    context = client.get(reverse("dashboard")).context
    sites = {s.name: s for s in context["sites"]}

    assert charlie.is_authenticated
    assert sites[world.site_b.name].rows == world.ds_b.row_count
    assert sites[world.site_a.name].rows == world.ds_a.row_count  # the rejected upload adds nothing
    assert sites[newcomer.name].rows == 150
    assert context["totals"]["rows"] == world.ds_a.row_count + world.ds_b.row_count + 150


def test_dashboard_shows_no_row_of_data(client, world):
    client.force_login(world.charlie)

    page = client.get(reverse("dashboard")).content.decode()

    with world.ds_a.file.open("rb") as fh:
        first_row = fh.read().decode().splitlines()[1]
    assert first_row not in page
