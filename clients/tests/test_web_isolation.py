"""Nothing of site A reaches site B's member, on any page or download; the coordinator
sees site A's aggregate figures but never a value from its file."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def _pages_for_bob(world):
    shared = world.shared.pk
    return [
        reverse("home"), reverse("site_home"), reverse("dataset_upload"),
        reverse("dataset_detail", args=[world.ds_b.pk]), reverse("experiment_list"),
        reverse("experiment_detail", args=[shared]), reverse("experiment_live", args=[shared]),
        reverse("model_list", args=[shared]), reverse("model_list", args=[shared]) + "?version=1",
        reverse("experiment_export_json", args=[shared]), reverse("experiment_export_metrics", args=[shared]),
        reverse("experiment_export_log", args=[shared]), reverse("predict"),
        reverse("predict") + f"?version={world.version.pk}",
    ]


def _found(secret: str, text: str) -> bool:
    # Numbers must stand alone: "413" inside a CSRF token or a longer figure is not a leak.
    if re.fullmatch(r"[\d.]+", secret):
        return re.search(rf"(?<![\w.]){re.escape(secret)}(?![\w])", text) is not None
    return secret in text


def test_site_b_member_never_sees_site_a(client, world):
    client.force_login(world.bob)
    secrets = world.a_secrets()

    for url in _pages_for_bob(world):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
        text = response.content.decode()
        leaked = [s for s in secrets if _found(s, text)]
        assert not leaked, f"{url} shows site A's {leaked}"


def test_site_b_member_sees_their_own_figures_but_no_mean_over_two_sites(client, world):
    client.force_login(world.bob)

    live = client.get(reverse("experiment_live", args=[world.shared.pk])).json()
    sites = live["figures"]["sites"]["accuracy"]["data"]

    assert sites[0]["x"] == ["Brookfield Clinic"]
    assert sites[0]["y"] == [0.7422] and sites[1]["y"] == [0.7611]
    # Two sites only: the mean and bob's own figure would give site A's exactly.
    assert [y for y in live["figures"]["global"]["accuracy"]["data"][0]["y"] if y is not None] == []
    client.force_login(world.charlie)
    coordinator = client.get(reverse("experiment_live", args=[world.shared.pk])).json()
    assert coordinator["figures"]["global"]["accuracy"]["data"][0]["y"][-1] == pytest.approx((0.8263 + 0.7611) / 2)


def test_coordinator_sees_aggregates_but_not_the_values_in_a_sites_file(client, world):
    client.force_login(world.charlie)

    rejected = client.get(reverse("dataset_detail", args=[world.rejected_a.pk])).content.decode()
    ready = client.get(reverse("dataset_detail", args=[world.ds_a.pk])).content.decode()

    assert "ALDERLEY-CELL" not in rejected  # a cell value quoted by the validation report
    assert "Not a number" in rejected  # the counts per kind are aggregate
    assert "heart_rate" in ready and str(world.ds_a.row_count) in ready
    assert reverse("dataset_download", args=[world.ds_a.pk]) not in ready


def test_the_owning_site_sees_its_full_validation_report(client, world):
    client.force_login(world.alice)

    page = client.get(reverse("dataset_detail", args=[world.rejected_a.pk])).content.decode()

    assert "ALDERLEY-CELL" in page


def test_only_the_owning_site_downloads_its_file(client, world):
    client.force_login(world.alice)

    response = client.get(reverse("dataset_download", args=[world.ds_a.pk]))
    body = b"".join(response.streaming_content)
    response.close()

    assert response.status_code == 200
    assert body.startswith(b"heart_rate,")
    assert response["Content-Disposition"].startswith("attachment;")


def test_the_leak_check_would_catch_site_a_figures(client, world):
    """Every string the isolation test looks for does appear on site A's own pages."""
    client.force_login(world.alice)
    urls = [*_pages_for_bob(world)[:2], reverse("dataset_detail", args=[world.ds_a.pk]),
            reverse("dataset_detail", args=[world.rejected_a.pk]),
            reverse("experiment_live", args=[world.shared.pk]), reverse("experiment_detail", args=[world.only_a.pk])]
    text = "".join(client.get(url, follow=True).content.decode() for url in urls)

    assert [s for s in world.a_secrets() if not _found(s, text)] == []
