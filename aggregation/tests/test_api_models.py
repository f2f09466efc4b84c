"""Model versions over the API: metadata, and weights as safetensors with their SHA-256."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from aggregation.services import artifacts
from fedhealth.ml.weights_io import weights_from_bytes

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db

URL = "/api/v1/models/"


@pytest.fixture
def version(study):
    return study["done"].versions.get(version=2)


def test_no_token_is_401(anon, version):
    for path in (URL, f"{URL}{version.pk}/", f"{URL}{version.pk}/weights/"):
        assert anon.get(path).status_code == 401


@pytest.mark.parametrize("who, count", [("alice", 2), ("bob", 0), ("charlie", 2)])
def test_list_is_scoped(personas, version, who, count):
    assert personas[who].get(URL).json()["count"] == count


@pytest.mark.parametrize("who, status", [("alice", 200), ("bob", 404), ("charlie", 200)])
def test_another_sites_model_is_404(personas, version, who, status):
    assert personas[who].get(f"{URL}{version.pk}/").status_code == status
    assert personas[who].get(f"{URL}{version.pk}/weights/").status_code == status


def test_metadata(personas, version):
    body = personas["alice"].get(f"{URL}{version.pk}/").json()

    assert body["version"] == 2 and body["round"] == 2 and body["sha256"] == version.sha256
    assert body["normalizer"] == version.normalizer and body["model_config"]["n_features"] == 4
    # One site only: a site never sees a mean fewer than FEDHEALTH_MIN_FIGURE_SITES stand behind.
    assert body["metrics"] == {"mean": {}, "sites_reported": 0, "final": False}
    coordinator = personas["charlie"].get(f"{URL}{version.pk}/").json()["metrics"]
    assert coordinator["sites_reported"] == 1 and "accuracy" in coordinator["mean"]


def test_weights_download_is_safetensors_with_its_checksum(personas, version):
    response = personas["alice"].get(
        f"{URL}{version.pk}/weights/", HTTP_ACCEPT="application/octet-stream"
    )

    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    data = b"".join(response.streaming_content) if response.streaming else response.content
    assert hashlib.sha256(data).hexdigest() == response["X-Content-SHA256"] == version.sha256
    assert json.loads(response["X-Normalizer"]) == version.normalizer
    stored = artifacts.load_weights(version.weights_file, version.sha256)
    for name, array in weights_from_bytes(data, expected_sha256=version.sha256).items():
        np.testing.assert_array_equal(array, stored[name])


def test_filter_by_experiment(personas, version, study):
    charlie = personas["charlie"]

    assert charlie.get(URL, {"experiment": study["done"].pk}).json()["count"] == 2
    assert charlie.get(URL, {"experiment": study["draft"].pk}).json()["count"] == 0
