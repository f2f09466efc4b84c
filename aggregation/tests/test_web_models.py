"""Model versions: metrics, checksums, downloads and the analytics charts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.urls import reverse

from aggregation.services import artifacts
from clients.tests import conftest as web
from fedhealth.files import read_bytes, write_bytes
from fedhealth.ml.weights_io import read_metadata, weights_from_bytes

pytestmark = pytest.mark.django_db
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world


def test_versions_are_listed_newest_first_with_metrics_and_checksums(client, world):
    client.force_login(world.charlie)

    response = client.get(reverse("model_list", args=[world.shared.pk]))

    assert [v.version for v in response.context["versions"]] == [2, 1]
    page = response.content.decode()
    assert world.version.sha256 in page
    assert f"{(0.8263 + 0.7611) / 2:.3f}" in page  # mean accuracy over the two sites
    assert reverse("model_download", args=[world.version.pk]) in page


def test_a_site_sees_no_mean_that_two_sites_stand_behind(client, world):
    client.force_login(world.alice)

    page = client.get(reverse("model_list", args=[world.shared.pk])).content.decode()

    assert world.version.sha256 in page and reverse("model_download", args=[world.version.pk]) in page
    # With two sites, the mean and one's own figure would give the other site's.
    assert f"{(0.8263 + 0.7611) / 2:.3f}" not in page and "not shown" in page


def test_download_is_the_verified_safetensors_file(client, world):
    client.force_login(world.bob)

    response = client.get(reverse("model_download", args=[world.version.pk]))

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="shared-vitals-study-v2.safetensors"'
    # The download describes itself (metadata), so its own checksum differs from the
    # stored file's; the tensors are the stored file's, whose checksum it keeps.
    assert hashlib.sha256(response.content).hexdigest() == response["X-Checksum-SHA256"]
    assert response["X-Stored-SHA256"] == world.version.sha256
    stored = weights_from_bytes(read_bytes(world.version.weights_file), expected_sha256=world.version.sha256)
    downloaded = weights_from_bytes(response.content)
    assert list(downloaded) == list(stored)
    for name, array in stored.items():
        np.testing.assert_array_equal(downloaded[name], array)
    assert read_metadata(response.content)["fedhealth.stored_sha256"] == world.version.sha256


def test_a_download_predicts_from_the_file_alone_and_has_a_card(client, world, tmp_path):
    from fedhealth.ml import load_model

    client.force_login(world.bob)
    path = tmp_path / "model.safetensors"
    path.write_bytes(client.get(reverse("model_download", args=[world.version.pk])).content)
    model = load_model(path)
    assert model.card["round"] == world.version.version
    assert model.card["experiment"]["id"] == world.version.experiment_id
    assert model.card["schema"] == world.version.schema
    assert model.card["normalizer"] == world.version.normalizer
    row = {f["name"]: (f["min"] + f["max"]) / 2 for f in world.version.schema["features"]}
    assert 0.0 <= float(model.predict_proba([row])[0]) <= 1.0
    response = client.get(reverse("model_card", args=[world.version.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    card = response.json()
    assert card["round"] == model.card["round"] and card["sha256_stored"] == world.version.sha256
    assert [f["name"] for f in card["features"]] == [f["name"] for f in world.version.schema["features"]]
    # The figures in a site's card are what the policy lets that site see.
    assert card.get("metrics") == (model.card.get("metrics"))


def test_a_tampered_file_is_not_served(client, world):
    write_bytes(world.version.weights_file, b"not the model")
    client.force_login(world.charlie)

    response = client.get(reverse("model_download", args=[world.version.pk]))

    assert response.status_code == 409


def test_coordinator_analytics_cover_every_site(client, world):
    client.force_login(world.charlie)

    analytics = client.get(reverse("model_list", args=[world.shared.pk])).context["analytics"]

    roc = analytics["figures"]["roc"]["data"]
    assert [t["name"] for t in roc] == [world.site_a.name, world.site_b.name, "Chance"]
    assert analytics["figures"]["confusion"]["data"][0]["z"] == [[40, 10], [12, 92]]  # pooled over both
    assert [name for name, _, _ in analytics["per_site"]] == [world.site_a.name, world.site_b.name]


def test_member_analytics_cover_only_their_site(client, world):
    client.force_login(world.bob)

    response = client.get(reverse("model_list", args=[world.shared.pk]), {"version": 1})
    analytics = response.context["analytics"]

    assert response.context["selected"].version == 1
    assert [t["name"] for t in analytics["figures"]["calibration"]["data"]] == [world.site_b.name, "Perfect calibration"]
    assert analytics["figures"]["confusion"]["data"][0]["z"] == [[20, 5], [6, 46]]
    assert 'id="analytics-data"' in response.content.decode()


def test_a_version_nobody_evaluated_yet_says_so(client, world):
    world.version.evaluations.all().delete()
    client.force_login(world.charlie)

    response = client.get(reverse("model_list", args=[world.shared.pk]))

    assert response.context["analytics"] is None
    assert "No site has evaluated this version yet." in response.content.decode()


def test_an_experiment_without_versions(client, world):
    client.force_login(world.charlie)

    page = client.get(reverse("model_list", args=[world.draft.pk])).content.decode()

    assert "No version yet" in page


def test_version_files_are_where_artifacts_put_them(world):
    assert world.version.weights_file == artifacts.version_name(world.shared, 2)
