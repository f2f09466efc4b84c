"""The admin panel: every model listed, useful actions, no row of data shown."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from aggregation.models import Experiment

pytestmark = pytest.mark.django_db

OURS = {"clients", "aggregation"}


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    return client


def test_every_model_has_a_working_changelist_and_change_page(staff, world):
    models = [m for m in admin.site._registry if m._meta.app_label in OURS]
    assert {m.__name__ for m in models} >= {
        "Site", "Membership", "Dataset", "Experiment", "Participant", "Round", "ClientUpdate", "ModelVersion",
        "SiteEvaluation",
    }
    for model in models:
        meta = model._meta
        changelist = staff.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"), {"q": "a"})
        assert changelist.status_code == 200, meta.model_name
        obj = model.objects.first()
        if obj is not None:
            change = staff.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk]))
            assert change.status_code == 200, meta.model_name


def test_dataset_admin_shows_counts_not_the_cells_of_the_file(staff, world):
    page = staff.get(reverse("admin:clients_dataset_change", args=[world.rejected_a.pk])).content.decode()

    assert "non_numeric: 1" in page
    assert "ALDERLEY-CELL" not in page


def test_deactivate_sites_action(staff, world):
    staff.post(reverse("admin:clients_site_changelist"), {
        "action": "deactivate", "_selected_action": [world.site_b.pk],
    })

    world.site_b.refresh_from_db()
    assert not world.site_b.is_active


def test_experiment_actions_start_and_cancel(staff, world):
    url = reverse("admin:aggregation_experiment_changelist")

    staff.post(url, {"action": "start", "_selected_action": [world.draft.pk]})
    assert Experiment.objects.get(pk=world.draft.pk).status == "running"
    staff.post(url, {"action": "cancel", "_selected_action": [world.draft.pk]})
    assert Experiment.objects.get(pk=world.draft.pk).status == "cancelled"
