"""Accepting an invitation: the invitee chooses a username and password and joins the
site in the invitation's role (clients/people.py spends the link in the same transaction)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_post_parameters

from clients import people
from clients.people_forms import AcceptInvitationForm


@sensitive_post_parameters("password1", "password2")
def invitation_accept(request, key: str):
    invitation = people.find_invitation(key)
    closed = people.why_closed(invitation)
    form = AcceptInvitationForm(request.POST or None)
    if closed is None and request.method == "POST" and form.is_valid():
        try:
            user = people.accept(
                key, username=form.cleaned_data["username"], password=form.cleaned_data["password1"]
            )
        except people.PeopleChangeRefused as exc:
            if exc.field in form.fields:
                form.add_error(exc.field, exc.message)
            else:
                closed = exc.message
        else:
            # A new session for the new account (login() cycles the session key).
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(
                request,
                f"Welcome to {invitation.site.name}: you are signed in as "
                f"{user.get_username()}, {user.membership.get_role_display().lower()}.",
            )
            return redirect("site_home")
    response = render(
        request,
        "clients/invitation_accept.html",
        {
            "invitation": invitation if closed is None else None,
            "closed": closed,
            "form": form,
            "signed_in_as": request.user.get_username() if request.user.is_authenticated else None,
        },
        status=410 if closed else (400 if form.errors else 200),
    )
    add_never_cache_headers(response)
    return response
