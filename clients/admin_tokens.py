"""Admin for API tokens: issue (the token is shown once, in a message), list, revoke."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from audit import services as audit

from .models import ApiToken


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["kind", "user", "site", "name"]

    def clean(self):
        data = super().clean()
        kind, user, site = data.get("kind"), data.get("user"), data.get("site")
        if kind == ApiToken.Kind.PERSONAL and (user is None or site is not None):
            raise forms.ValidationError("A personal token needs a user and no site.")
        if kind == ApiToken.Kind.SITE and (site is None or user is not None):
            raise forms.ValidationError("A site token needs a site and no user.")
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = [
        "prefix",
        "kind",
        "user",
        "site",
        "name",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["kind", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username", "site__slug"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    autocomplete_fields = ["site"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        # A token's owner never changes: issue a new token instead.
        return [*self.readonly_fields, "kind", "user", "site"] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            raw = obj.set_new_secret()
            obj.created_by = request.user
            super().save_model(request, obj, form, change)
            audit.record(audit.Kind.TOKEN_CREATE, site=obj.site, target=f"token {obj.prefix}",
                         details={"kind": obj.kind, "name": obj.name, "via": "admin"})
            self.message_user(
                request,
                f"Token {obj.prefix} issued. Copy it now, it will not be shown again: {raw}",
                messages.WARNING,
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        n = 0
        for token in queryset.filter(revoked_at__isnull=True):
            token.revoke()  # one audit event each
            n += 1
        self.message_user(request, f"{n} token(s) revoked.", messages.SUCCESS)
