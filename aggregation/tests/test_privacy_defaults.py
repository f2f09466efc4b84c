"""A record-level DP experiment gets DP-SGD's measured local settings (DP_TRAIN_DEFAULTS)
where its creator left batch size and learning rate out; what is given is kept."""

from __future__ import annotations

import pytest

from aggregation.services.creation import create_experiment
from fedhealth.ml.privacy import DP_TRAIN_DEFAULTS

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]


def test_dp_experiments_take_dp_sgds_batch_and_rate_unless_given(
    site_a, make_dataset, charlie, client_for
):
    dataset = make_dataset(site_a, rows=200, seed=1)

    plain = create_experiment(name="plain", datasets=[dataset])
    private = create_experiment(name="dp", datasets=[dataset], dp_mode="record")
    chosen = create_experiment(name="dp64", datasets=[dataset], dp_mode="record", batch_size=64)
    body = {"name": "api", "datasets": [dataset.pk], "dp_mode": "record"}
    api = client_for(charlie).post("/api/v1/experiments/", body, format="json")

    assert (plain.batch_size, plain.lr) == (32, 0.003)
    assert (
        (private.batch_size, private.lr)
        == (DP_TRAIN_DEFAULTS["batch_size"], DP_TRAIN_DEFAULTS["lr"])
        == (256, 0.03)
    )
    assert (chosen.batch_size, chosen.lr) == (64, 0.03)
    assert api.status_code == 201, api.json()
    assert (api.json()["batch_size"], api.json()["lr"]) == (256, 0.03)
