from django.contrib import admin

from fedhealth.readonly_admin import ReadOnlyAdmin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only: an event is appended by audit.services.record and never edited."""

    list_display = ["seq", "created_at", "kind", "actor", "site_name", "client_address", "target"]
    list_filter = ["kind"]
    search_fields = ["actor", "target", "site_name"]
