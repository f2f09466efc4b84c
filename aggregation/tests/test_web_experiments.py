"""Creating and configuring an experiment, and the start/pause/resume/cancel buttons."""

from __future__ import annotations

import pytest
from django.urls import reverse

from aggregation.models import Experiment, Round
from clients.tests import conftest as web
from fedhealth.ml.schema import DEFAULT_SCHEMA

pytestmark = pytest.mark.django_db
# The web tests' shared fixtures (clients/tests/conftest.py).
world = web.world


def form_data(world, **overrides) -> dict:
    data = {
        "name": "Winter cohort", "description": "", "model_kind": "mlp", "hidden": "32, 16",
        "strategy": "fedprox", "fedprox__proximal_mu": "0.05",
        "num_rounds": "4", "local_epochs": "1", "batch_size": "16", "lr": "0.005", "weight_decay": "0.0001",
        "dropout": "0", "min_sites": "2", "fraction_fit": "1", "deadline_minutes": "20", "test_fraction": "0.2",
        "seed": "3", f"site_{world.site_a.pk}": str(world.ds_a.pk), f"site_{world.site_b.pk}": str(world.ds_b.pk),
    }
    return data | overrides


def test_create_form_offers_each_sites_ready_datasets(client, world):
    client.force_login(world.charlie)

    form = client.get(reverse("experiment_create")).context["form"]

    a = form.fields[f"site_{world.site_a.pk}"]
    assert [value for value, _ in a.choices] == ["", world.ds_a.pk]  # not the rejected upload
    assert "413 rows" in a.choices[1][1]
    assert {f"{s}__{p}" for s, p in [("fedprox", "proximal_mu"), ("fedadam", "eta"), ("trimmed_mean", "beta")]} <= set(form.fields)


def test_creating_an_experiment_saves_a_draft_with_its_sites(client, world):
    client.force_login(world.charlie)

    response = client.post(reverse("experiment_create"), form_data(world))

    experiment = Experiment.objects.get(name="Winter cohort")
    assert response.status_code == 302 and response["Location"] == reverse("experiment_detail", args=[experiment.pk])
    assert experiment.status == Experiment.Status.DRAFT
    assert experiment.schema == DEFAULT_SCHEMA.to_dict()
    assert experiment.hidden_layers == [32, 16]
    assert (experiment.strategy, experiment.strategy_params) == ("fedprox", {"proximal_mu": 0.05})
    assert (experiment.num_rounds, experiment.local_epochs, experiment.batch_size) == (4, 1, 16)
    assert (experiment.min_sites, experiment.round_timeout, experiment.seed) == (2, 1200, 3)
    assert experiment.created_by == world.charlie
    assert {(p.site_id, p.dataset_id) for p in experiment.participants.all()} == {
        (world.site_a.pk, world.ds_a.pk), (world.site_b.pk, world.ds_b.pk),
    }


def test_logistic_regression_has_no_hidden_layers(client, world):
    client.force_login(world.charlie)

    client.post(reverse("experiment_create"), form_data(world, model_kind="logistic", hidden="", strategy="fedavg"))

    experiment = Experiment.objects.get(name="Winter cohort")
    assert experiment.hidden_layers == [] and experiment.strategy_params == {}


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"fedprox__proximal_mu": "-1"}, "strategy", "proximal_mu must be in [0, inf)"),
    ({"strategy": "trimmed_mean", "trimmed_mean__beta": "0.7"}, "strategy", "beta must be in [0, 0.5)"),
    ({"min_sites": "3"}, "min_sites", "Only 2 sites take part."),
    ({"hidden": "64, abc"}, "hidden", "Widths must be whole numbers"),
    ({"hidden": "5000"}, "hidden", "each 1 to 1024 wide"),
    ({"num_rounds": "0"}, "num_rounds", "greater than or equal to 1"),
    ({"lr": "2"}, "lr", "less than or equal to 1"),
])
def test_invalid_configuration_is_explained_per_field(client, world, overrides, field, message):
    client.force_login(world.charlie)

    response = client.post(reverse("experiment_create"), form_data(world, **overrides))

    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field]), response.context["form"].errors
    assert not Experiment.objects.filter(name="Winter cohort").exists()


def test_at_least_one_site_must_take_part(client, world):
    client.force_login(world.charlie)
    data = form_data(world, min_sites="1")
    data[f"site_{world.site_a.pk}"] = data[f"site_{world.site_b.pk}"] = ""

    response = client.post(reverse("experiment_create"), data)

    assert "Choose a dataset for at least one site." in response.context["form"].non_field_errors()


def test_a_dataset_of_another_site_cannot_be_smuggled_in(client, world):
    client.force_login(world.charlie)

    response = client.post(reverse("experiment_create"), form_data(world, **{f"site_{world.site_b.pk}": str(world.ds_a.pk)}))

    assert response.context["form"].errors[f"site_{world.site_b.pk}"]


def test_editing_a_draft_shows_its_configuration_and_saves_changes(client, world):
    client.force_login(world.charlie)
    url = reverse("experiment_edit", args=[world.draft.pk])

    form = client.get(url).context["form"]
    assert form[f"site_{world.site_a.pk}"].value() == world.ds_a.pk
    response = client.post(url, form_data(world, name="Draft study v2", **{f"site_{world.site_b.pk}": ""}, min_sites="1"))

    assert response.status_code == 302
    world.draft.refresh_from_db()
    assert world.draft.name == "Draft study v2"
    assert list(world.draft.participants.values_list("site_id", flat=True)) == [world.site_a.pk]


def test_a_started_experiment_cannot_be_edited(client, world):
    client.force_login(world.charlie)

    response = client.get(reverse("experiment_edit", args=[world.shared.pk]), follow=True)

    assert response.redirect_chain[-1][0] == reverse("experiment_detail", args=[world.shared.pk])
    assert "Only a draft experiment can be changed." in response.content.decode()


def test_start_pause_resume_cancel(client, world):
    client.force_login(world.charlie)
    pk = world.draft.pk

    def press(action):
        response = client.post(reverse(f"experiment_{action}", args=[pk]), follow=True)
        assert response.redirect_chain[-1][0] == reverse("experiment_detail", args=[pk])
        return response.content.decode(), Experiment.objects.get(pk=pk).status

    page, status = press("start")
    assert status == "running" and "Experiment started" in page
    assert Round.objects.get(experiment_id=pk).number == 1
    assert "Round 1 of 3 · 0 of 2 sites reported" in page
    assert press("pause")[1] == "paused"
    assert press("resume")[1] == "running"
    page, status = press("cancel")
    assert status == "cancelled" and "cancelled by the coordinator" in page


def test_an_impossible_transition_is_explained(client, world):
    client.force_login(world.charlie)

    response = client.post(reverse("experiment_resume", args=[world.shared.pk]), follow=True)

    assert "Could not resume the experiment: only a paused experiment can resume" in response.content.decode()


def test_starting_an_experiment_that_is_not_ready_says_why(client, world):
    world.site_b.is_active = False
    world.site_b.save()
    client.force_login(world.charlie)

    page = client.get(reverse("experiment_detail", args=[world.draft.pk])).content.decode()
    response = client.post(reverse("experiment_start", args=[world.draft.pk]), follow=True)

    assert "Before this experiment can start" in page and "is deactivated" in page
    assert "Could not start the experiment" in response.content.decode()
    world.draft.refresh_from_db()
    assert world.draft.status == "draft"


def test_members_see_no_buttons(client, world):
    client.force_login(world.alice)

    page = client.get(reverse("experiment_detail", args=[world.draft.pk])).content.decode()

    assert reverse("experiment_start", args=[world.draft.pk]) not in page
    assert reverse("experiment_edit", args=[world.draft.pk]) not in page
