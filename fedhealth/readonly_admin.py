"""Read-only Django admin for derived records (issue 9).

Rounds, client updates, model versions, evaluations, ledgers and audit events are what the
platform *did*: they are written by its services and workers, never by hand. If the admin
offered Add, Change or Delete on them, a superuser could fabricate a round, rewrite a metric
or erase a ledger entry, and the pages would show it as fact. So these admins say no to all
three for everyone, superusers included (Django checks the ModelAdmin's has_*_permission
before a superuser's blanket permissions); viewing stays as Django decides.
"""

from __future__ import annotations

from django.contrib import admin


class ReadOnlyMixin:
    """No Add, no Change, no Delete, whoever asks. Also removes the bulk "delete selected"
    action, which Django only offers with delete permission."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    pass


class ReadOnlyTabularInline(ReadOnlyMixin, admin.TabularInline):
    extra = 0
    can_delete = False
