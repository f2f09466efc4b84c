"""Forms of the site-management pages: a new site, an invitation, accepting one, a role,
a site token. The services (clients/people.py) decide; these only read the fields."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import Invitation, Site


class SiteForm(forms.ModelForm):
    invite_note = forms.CharField(
        label="First site admin",
        max_length=200,
        required=False,
        help_text="Who the invitation is for (a name or an email; shown only to you and the site). "
        "An invitation link for the site's first site admin is made at once.",
    )

    class Meta:
        model = Site
        fields = ["name", "slug", "mode", "contact_name", "contact_email"]
        labels = {
            "name": "Site name",
            "slug": "Short name",
            "mode": "How the site trains",
            "contact_name": "Contact name",
            "contact_email": "Contact email",
        }
        error_messages = {
            "name": {"unique": "A site with this name exists."},
            "slug": {"unique": "A site with this short name exists."},
        }
        help_texts = {
            "slug": "Lower-case letters, digits and hyphens; names the site's queue (site.<short name>) and "
            "its storage folder. It cannot be changed later.",
            "mode": "Hosted: the site uploads its CSV here and a worker trains on it. Agent: the data stays on "
            "the site's machine and its agent trains there.",
        }


class InviteForm(forms.Form):
    role = forms.ChoiceField(
        label="Role", choices=Invitation.Role.choices, initial=Invitation.Role.MEMBER
    )
    note = forms.CharField(
        label="Who it is for",
        max_length=200,
        required=False,
        help_text="A name or an email, to recognise the invitation in the list.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Invitation.Role.choices)


class TokenForm(forms.Form):
    name = forms.CharField(
        label="What the token is for",
        max_length=200,
        help_text="For example: agent on the ward-7 server.",
    )


class AcceptInvitationForm(UserCreationForm):
    """Username and password (Django's checks: unique username in any case, the
    password validators of settings.AUTH_PASSWORD_VALIDATORS)."""
