"""Admin pages for derived bookkeeping records that had none: read-only listings
(fedhealth/readonly_admin.py says why)."""

from __future__ import annotations

from django.contrib import admin

from fedhealth.readonly_admin import ReadOnlyAdmin

from .models import EvaluationAttempt, PrivacyLedgerEntry, WorkerHeartbeat


@admin.register(EvaluationAttempt)
class EvaluationAttemptAdmin(ReadOnlyAdmin):
    list_display = ["version", "site", "status", "attempts", "error_code", "updated_at"]
    list_filter = ["status", "site"]
    search_fields = ["site__name", "version__experiment__name", "error_code"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["queue", "hostname", "seen_at"]
    search_fields = ["queue", "hostname"]


@admin.register(PrivacyLedgerEntry)
class PrivacyLedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["dataset", "experiment", "round_number", "epsilon", "epsilon_total", "delta", "source",
                    "created_at"]
    list_filter = ["source"]
    search_fields = ["dataset__name", "experiment__name"]
