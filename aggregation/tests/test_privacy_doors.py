"""The DP options at every door (form, API, admin): stored when valid, refused with the
field and the value named when not (epsilon <= 0, delta at or above 1/rows, clip <= 0)."""

from __future__ import annotations

import math

import pytest

from aggregation.models import Experiment
from aggregation.services.creation import ExperimentInvalid, create_experiment
from aggregation.services.sitework import site_plan
from clients.tests import conftest as web
from tests.consent_support import accept_invitations

from .test_creation_doors import doors  # noqa: F401  (the three doors fixture)

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world


def test_the_defaults_are_off_then_epsilon_3_and_clip_1(world):
    plain = create_experiment(name="plain", datasets=[world.ds_a])
    private = create_experiment(name="dp", datasets=[world.ds_a], dp_mode="record")

    assert plain.dp_mode == "off" and plain.privacy_settings is None
    settings = private.privacy_settings
    assert (settings.epsilon, settings.delta, settings.clip_norm, settings.rounds) == (3.0, None, 1.0, private.num_rounds)


@pytest.mark.parametrize("door", ["web", "api", "admin"])
def test_a_private_experiment_is_stored_at_every_door(doors, door):  # noqa: F811
    created, errors = doors[door]("dp_mode", "record")
    assert created, errors
    experiment = Experiment.objects.latest("created_at")
    assert experiment.dp_mode == "record" and experiment.dp_epsilon == 3.0


@pytest.mark.parametrize("door", ["web", "api", "admin"])
@pytest.mark.parametrize(("field", "value"), [("dp_epsilon", 0), ("dp_epsilon", -1), ("dp_clip_norm", 0)])
def test_bad_epsilon_or_clip_is_refused_naming_the_field(doors, door, field, value):  # noqa: F811
    created, errors = doors[door](field, value)
    assert not created
    assert field in errors, errors


def test_delta_at_or_above_one_over_rows_is_refused_at_every_door(doors, world):  # noqa: F811
    rows = min(ds.row_count - math.ceil(0.25 * ds.row_count) for ds in (world.ds_a, world.ds_b))
    for door in ("web", "api"):
        created, errors = doors[door]("dp_delta", 1 / rows)
        assert not created and "dp_delta" in errors, (door, errors)
        assert any("below 1/rows" in str(m) for m in errors["dp_delta"]), errors
    created, errors = doors["admin"]("dp_delta", 1 / rows)
    assert not created and "dp_delta" in errors
    # Just below is fine.
    created, errors = doors["api"]("dp_delta", 0.5 / rows)
    assert created, errors


def test_the_service_message_names_field_and_value(world):
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(
            name="x", datasets=[world.ds_a], dp_mode="laplace", dp_epsilon=0, dp_clip_norm=-1, dp_delta=2
        )
    errors = caught.value.errors
    assert errors["dp_mode"] == ["dp_mode must be one of off, record, site, not 'laplace'."]
    assert errors["dp_epsilon"] == ["dp_epsilon must be between 0.01 and 100; got 0."]
    assert errors["dp_clip_norm"] == ["dp_clip_norm must be between 0.001 and 1000; got -1."]
    assert errors["dp_delta"] == ["dp_delta must be above 0 and below 1; got 2."]


def test_the_plan_sent_to_sites_carries_the_request(world):
    from aggregation import services

    experiment = create_experiment(
        name="dp", datasets=[world.ds_a], dp_mode="record", dp_epsilon=2.5, dp_clip_norm=0.7, num_rounds=4
    )
    accept_invitations(experiment.pk)
    services.start_experiment(experiment.pk)
    plan = site_plan(Experiment.objects.get(pk=experiment.pk), world.ds_a.site, 1)
    assert plan.privacy is not None
    assert plan.to_dict()["privacy"] == {"epsilon": 2.5, "delta": None, "clip_norm": 0.7, "rounds": 4}
