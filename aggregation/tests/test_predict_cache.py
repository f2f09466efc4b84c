"""The per-process cache of built models behind the prediction API: one entry per
version (not per weights file), never stale, and never a way round the caller's scope."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.services import artifacts
from aggregation.services.predict import _cache
from clients.tests import conftest as web
from fedhealth.ml.inference import predict
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.schema import Schema
from fedhealth.ml.stats import Normalizer

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world

RECORDS = [
    {"heart_rate": 72, "systolic_bp": 118, "diastolic_bp": 76, "spo2": 98},
    {"heart_rate": 118, "systolic_bp": 158, "diastolic_bp": 99, "spo2": 91},
]


@pytest.fixture(autouse=True)
def empty_cache():
    _cache.clear()
    yield
    _cache.clear()


def direct(version) -> list[float]:
    """The core's prediction from the version's own row, without any cache."""
    X = np.array([[r[f] for f in Schema.from_dict(version.schema).feature_names] for r in RECORDS], dtype=np.float32)
    prob, _ = predict(ModelConfig.from_dict(version.model_config),
                      artifacts.load_weights(version.weights_file, version.sha256),
                      Normalizer.from_dict(version.normalizer), X)
    return prob.tolist()


def predicted(client, version) -> list[float]:
    response = client.post(f"/api/v1/models/{version.pk}/predict/", {"records": RECORDS}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["probabilities"]


def test_versions_with_the_same_weights_keep_their_own_normaliser(world, client_for):
    # Both experiments start from the same initial weights; their normalisers differ
    # (one over both sites' rows, one over site A's).
    shared, only_a = world.version, world.version_a
    assert shared.sha256 == only_a.sha256 and shared.normalizer != only_a.normalizer
    charlie = client_for(world.charlie)

    first, second = predicted(charlie, only_a), predicted(charlie, shared)

    assert first == pytest.approx(direct(only_a)) and second == pytest.approx(direct(shared))
    assert first != pytest.approx(second)


def test_a_changed_version_row_is_not_served_from_the_cache(world, client_for):
    charlie, version = client_for(world.charlie), world.version
    before = predicted(charlie, version)
    # A restore under a running process: the same id and weights, another normaliser.
    version.normalizer = world.version_a.normalizer
    version.save(update_fields=["normalizer"])

    after = predicted(charlie, version)

    assert after == pytest.approx(direct(version)) and after != pytest.approx(before)


def test_a_cached_model_is_still_scoped_to_its_callers(world, client_for):
    # Site A's internal pilot, cached by site A's request, stays invisible to site B.
    predicted(client_for(world.alice), world.version_a)
    assert len(_cache) == 1

    response = client_for(world.bob).post(f"/api/v1/models/{world.version_a.pk}/predict/",
                                          {"records": RECORDS}, format="json")

    assert response.status_code == 404
    assert "probabilities" not in response.json()
