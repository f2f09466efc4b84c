"""One creation service behind the web form, the API and the admin: the same drafts are
accepted and refused at every door, with the bounds written once (services/creation.py)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from aggregation.models import Experiment
from aggregation.services.creation import (
    BOUNDS,
    MAX_DESCRIPTION_LENGTH,
    MAX_HIDDEN_LAYERS,
    MAX_LAYER_WIDTH,
    ExperimentInvalid,
    create_experiment,
    update_experiment,
)
from clients.tests import conftest as web
from clients.tests.api_support import error_fields

from .test_web_experiments import form_data

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world
API = "/api/v1/experiments/"


@pytest.fixture
def doors(client, world, client_for, django_user_model):
    """``doors[door](field, value) -> (created, errors)`` for the web form, the API and the
    admin, each posting a valid draft with one field changed."""
    client.force_login(world.charlie)
    api = client_for(world.charlie)
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    datasets = [world.ds_a.pk, world.ds_b.pk]
    counter = iter(range(10**6))

    def web_form(field, value):
        name = f"web {next(counter)}"
        if field == "round_timeout":  # the page asks for minutes
            field, value = "deadline_minutes", value / 60
        response = client.post(
            reverse("experiment_create"), form_data(world, name=name, **{field: str(value)})
        )
        created = Experiment.objects.filter(name=name).exists()
        return created, (None if created else response.context["form"].errors)

    def api_door(field, value):
        name = f"api {next(counter)}"
        response = api.post(API, {"name": name, "datasets": datasets, "min_sites": 2, field: value})
        created = response.status_code == 201
        assert created == Experiment.objects.filter(name=name).exists()
        return created, (None if created else error_fields(response))

    def admin_door(field, value):
        name = f"admin {next(counter)}"
        data = {
            "name": name,
            "description": "",
            "datasets": datasets,
            "hidden_layers": "[32, 16]",
            "strategy": "fedavg",
            "strategy_params": "{}",
            **{f: Experiment._meta.get_field(f).default for f in BOUNDS},
            "min_sites": 2,
            field: value,
        }
        response = staff.post(reverse("admin:aggregation_experiment_add"), data)
        created = Experiment.objects.filter(name=name).exists()
        assert created == (response.status_code == 302), response.content.decode()[:2000]
        return created, (None if created else response.context["adminform"].form.errors)

    return {"web": web_form, "api": api_door, "admin": admin_door}


def _outside(bound) -> tuple:
    if bound.integer:
        return bound.low - 1, bound.high + 1
    return bound.low - max(abs(bound.low) * 0.01, 1e-3 if bound.low else 0.01), bound.high * 1.01


def _inside(name, bound) -> tuple:
    # min_sites cannot reach its upper bound with two sites: the cross-field rule says why.
    return (bound.low,) if name == "min_sites" else (bound.low, bound.high)


@pytest.mark.parametrize("door", ["web", "api", "admin"])
@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_every_door_refuses_just_outside_and_accepts_just_inside(doors, door, field):
    bound = BOUNDS[field]

    for value in _outside(bound):
        created, errors = doors[door](field, value)
        assert not created, (door, field, value)
        shown = "deadline_minutes" if door == "web" and field == "round_timeout" else field
        assert shown in errors, (door, field, value, errors)
    for value in _inside(field, bound):
        created, errors = doors[door](field, value)
        assert created, (door, field, value, errors)


def test_the_form_widgets_and_the_openapi_bounds_are_the_services(client, world):
    client.force_login(world.charlie)
    form = client.get(reverse("experiment_create")).context["form"]
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    props = schema.json()["components"]["schemas"]["ExperimentCreateRequest"]["properties"]

    for name, bound in BOUNDS.items():
        if name != "round_timeout":
            attrs = form.fields[name].widget.attrs
            assert (float(attrs["min"]), float(attrs["max"])) == (bound.low, bound.high), name
        assert (props[name]["minimum"], props[name]["maximum"]) == (bound.low, bound.high), name
    minutes = form.fields["deadline_minutes"].widget.attrs
    assert (minutes["min"] * 60, minutes["max"] * 60) == (
        BOUNDS["round_timeout"].low,
        BOUNDS["round_timeout"].high,
    )


def test_a_negative_seed_is_refused_with_a_message_at_every_door(doors):
    for door in ("web", "api", "admin"):
        created, errors = doors[door]("seed", -5)
        assert not created
        assert any("greater than or equal to 0" in m or "-5" in m for m in errors["seed"]), (
            door,
            errors,
        )


def test_the_service_names_the_field_and_the_value(world):
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="x", datasets=[world.ds_a], seed=-1, lr=3.0, hidden_layers=[0])

    assert caught.value.errors["seed"] == [
        f"seed must be between 0 and {BOUNDS['seed'].high}; got -1."
    ]
    assert "got 3" in caught.value.errors["lr"][0]
    assert "not 0" in caught.value.errors["hidden_layers"][0]
    assert not Experiment.objects.filter(name="x").exists()


def test_a_9_mb_description_is_refused_at_every_door(doors, world):
    huge = "x" * (9 * 1024 * 1024)

    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="big", description=huge, datasets=[world.ds_a])
    assert "the limit is 5,000" in caught.value.errors["description"][0]
    for door in ("web", "api", "admin"):
        created, errors = doors[door]("description", huge)
        assert not created and "description" in errors, door
    created, _ = doors["api"]("description", "y" * MAX_DESCRIPTION_LENGTH)
    assert created


def test_layer_count_and_width_come_from_the_service(doors):
    too_many = [8] * (MAX_HIDDEN_LAYERS + 1)

    assert not doors["api"]("hidden_layers", too_many)[0]
    assert not doors["api"]("hidden_layers", [MAX_LAYER_WIDTH + 1])[0]
    assert not doors["web"]("hidden", ", ".join(map(str, too_many)))[0]
    assert not doors["web"]("hidden", str(MAX_LAYER_WIDTH + 1))[0]
    assert not doors["admin"]("hidden_layers", str(too_many))[0]
    assert doors["api"]("hidden_layers", [MAX_LAYER_WIDTH] * MAX_HIDDEN_LAYERS)[0]
    assert doors["web"]("hidden", ", ".join([str(MAX_LAYER_WIDTH)] * MAX_HIDDEN_LAYERS))[0]
    assert doors["admin"]("hidden_layers", str([MAX_LAYER_WIDTH] * MAX_HIDDEN_LAYERS))[0]


def test_strategy_parameters_are_checked_by_the_strategy(doors):
    created, errors = doors["admin"]("strategy_params", '{"eta": 0.1}')
    assert not created and "strategy_params" in errors
    created, errors = doors["api"]("strategy_params", {"eta": 0.1})
    assert not created and "strategy_params" in errors


def test_an_agent_sites_stored_upload_is_not_offered_nor_accepted(world, client):
    # A file stored while the site was hosted; the site has since moved to an agent.
    world.site_b.mode = "agent"
    world.site_b.save()
    client.force_login(world.charlie)

    form = client.get(reverse("experiment_create")).context["form"]
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="mixed", datasets=[world.ds_a, world.ds_b])

    assert f"site_{world.site_b.pk}" not in form.fields
    assert "runs a site agent" in caught.value.errors["datasets"][0]


def test_a_draft_edit_goes_through_the_service_and_a_started_experiment_cannot_change(world):
    draft = world.draft

    with pytest.raises(ExperimentInvalid) as caught:
        update_experiment(draft, name=draft.name, datasets=[world.ds_a], seed=-1)
    assert "seed" in caught.value.errors
    edited = update_experiment(draft, name="renamed", datasets=[world.ds_a], seed=7)
    assert (edited.name, edited.seed) == ("renamed", 7)
    assert list(edited.participants.values_list("dataset_id", flat=True)) == [world.ds_a.pk]

    with pytest.raises(ExperimentInvalid) as caught:
        update_experiment(world.shared, name="late", datasets=[world.ds_a])
    assert "status" in caught.value.errors
    world.shared.refresh_from_db()
    assert world.shared.name != "late"


def test_the_admin_cannot_edit_a_started_experiment(world, django_user_model):
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    url = reverse("admin:aggregation_experiment_change", args=[world.shared.pk])
    before = Experiment.objects.values().get(pk=world.shared.pk)

    assert staff.get(url).status_code == 200
    staff.post(url, {"name": "changed", "seed": "-3"})

    assert Experiment.objects.values().get(pk=world.shared.pk) == before


def test_a_robust_strategy_needs_enough_sites_to_outvote(doors, world):
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(
            name="k",
            datasets=[world.ds_a, world.ds_b],
            strategy="krum",
            strategy_params={"byzantine": 1},
        )

    assert caught.value.errors["strategy_params"] == [
        "krum with these parameters needs at least 5 sites; 2 take part."
    ]
    created, errors = doors["web"]("strategy", "krum")
    assert not created and "needs at least 5 sites" in errors["strategy"][0]
