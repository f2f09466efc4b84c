"""Derived records are read-only in the Django admin, even for a superuser (issue 9):
no Add, no Change, no Delete, checked on the ModelAdmin and through HTTP."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from aggregation.models import (
    ClientUpdate,
    EvaluationAttempt,
    ModelVersion,
    PrivacyLedgerEntry,
    Round,
    SiteEvaluation,
    WorkerHeartbeat,
)

pytestmark = pytest.mark.django_db

DERIVED = [Round, ClientUpdate, ModelVersion, SiteEvaluation, EvaluationAttempt, WorkerHeartbeat,
           PrivacyLedgerEntry]


def _derived_models():
    models = list(DERIVED)
    from audit.models import AuditEvent  # the audit trail's events

    return [*models, AuditEvent]


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw")


@pytest.fixture
def records(world):
    version = ModelVersion.objects.first()
    EvaluationAttempt.objects.create(version=version, site=world.site_a, attempts=1)
    WorkerHeartbeat.objects.create(queue="site-a", hostname="w1", seen_at=timezone.now())
    return world


@pytest.mark.parametrize("model", _derived_models(), ids=lambda m: m.__name__)
def test_admin_refuses_add_change_delete_even_to_a_superuser(model, root):
    model_admin = admin.site._registry.get(model)
    assert model_admin is not None, f"{model.__name__} is not in the admin"
    request = RequestFactory().get("/")
    request.user = root

    assert model_admin.has_add_permission(request) is False
    assert model_admin.has_change_permission(request) is False
    assert model_admin.has_delete_permission(request) is False
    assert "delete_selected" not in model_admin.get_actions(request)
    for inline in model_admin.get_inline_instances(request):
        assert not inline.has_add_permission(request, None)
        assert not inline.has_change_permission(request)
        assert not inline.has_delete_permission(request)


@pytest.mark.parametrize("model", DERIVED, ids=lambda m: m.__name__)
def test_add_change_and_delete_pages_are_forbidden(model, root, client, records):
    client.force_login(root)
    meta = model._meta
    prefix = f"admin:{meta.app_label}_{meta.model_name}"
    assert client.get(reverse(f"{prefix}_add")).status_code == 403
    assert client.get(reverse(f"{prefix}_changelist")).status_code == 200  # still viewable

    obj = model.objects.first()
    if obj is None:
        return
    before = model.objects.filter(pk=obj.pk).values().get()
    page = client.get(reverse(f"{prefix}_change", args=[obj.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()  # a view page, not a form
    client.post(reverse(f"{prefix}_change", args=[obj.pk]), {"_save": "Save"})
    assert client.post(reverse(f"{prefix}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=obj.pk).values().get() == before
