from django.contrib import admin, messages

from .models import Dataset, Membership, Site
from .policy import dataset_summary


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "mode", "is_active", "contact_email", "created_at"]
    list_filter = ["mode", "is_active"]
    search_fields = ["name", "slug", "contact_name", "contact_email"]
    prepopulated_fields = {"slug": ["name"]}
    actions = ["deactivate", "activate"]

    @admin.action(description="Deactivate selected sites (they leave future rounds)")
    def deactivate(self, request, queryset):
        n = queryset.update(is_active=False)
        self.message_user(request, f"{n} site(s) deactivated.", messages.SUCCESS)

    @admin.action(description="Activate selected sites")
    def activate(self, request, queryset):
        n = queryset.update(is_active=True)
        self.message_user(request, f"{n} site(s) activated.", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "site", "role"]
    list_filter = ["role", "site"]
    search_fields = ["user__username", "user__email", "site__name"]
    autocomplete_fields = ["site"]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    # No link to the file: the admin shows what a coordinator may see, never rows.
    list_display = ["name", "site", "status", "row_count", "label_balance_pct", "rows_dropped", "created_at"]
    list_filter = ["status", "site"]
    search_fields = ["name", "site__name", "sha256"]
    readonly_fields = [
        "site", "name", "schema", "policy", "sha256", "size_bytes", "row_count", "positive_count",
        "rows_dropped", "shared_summary", "validation_counts", "status", "uploaded_by", "created_at",
    ]
    # The report's examples quote cell values from the file: only counts are shown here. The
    # stored summary has per-feature minima and maxima (one patient's values on a small site)
    # and the exact sufficient statistics: the admin shows what clients/policy.py shows a
    # coordinator instead.
    exclude = ["file", "validation_report", "stats", "summary"]

    @admin.display(description="Summary (as the coordinator sees it)")
    def shared_summary(self, obj: Dataset) -> str:
        shown = dataset_summary(None, obj)
        if shown.withheld:
            return shown.withheld
        return "; ".join(f"{name}: mean {f['mean']}, SD {f['std']}" for name, f in shown.features) or "-"

    @admin.display(description="Validation problems")
    def validation_counts(self, obj: Dataset) -> str:
        counts = (obj.validation_report or {}).get("counts") or {}
        return ", ".join(f"{kind}: {n}" for kind, n in counts.items()) or "none"

    @admin.display(description="Healthy %")
    def label_balance_pct(self, obj: Dataset) -> str:
        return f"{obj.label_balance:.0%}"

    def has_add_permission(self, request):
        return False  # datasets arrive through the validated upload, never by hand
from . import admin_tokens  # noqa: E402,F401  API tokens (clients/admin_tokens.py)
