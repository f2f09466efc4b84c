"""A site admin's page for the site's people and site tokens (clients/people.py decides).

Every object is looked up within the admin's own site first, so another site's member,
invitation or token is a 404; a site member (not admin) gets 403 on the whole page.
A new invitation link or token is shown in the POST's own response, never stored (not
even in a message, which would put it in a cookie or the session).
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.formats import date_format
from django.utils.timezone import localtime
from django.views.decorators.http import require_POST

from clients import people
from clients.models import ApiToken, Invitation, Membership
from clients.people_forms import InviteForm, RoleForm, TokenForm
from clients.permissions import is_site_admin

from .access import site_member_required


def site_admin_required(view):
    """A site admin of an active site; the view gets the site as ``request.site``."""

    @site_member_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not is_site_admin(request.user):
            raise PermissionDenied("Only a site admin manages the site's people and tokens.")
        return view(request, *args, **kwargs)

    return wrapped


def shown_link(request, invitation: Invitation, raw: str) -> dict:
    """What the page shows of a new invitation, once: the link and when it stops working."""
    return {
        "url": request.build_absolute_uri(reverse("invitation_accept", args=[raw])),
        "title": f"Invitation link for a {invitation.get_role_display().lower()} of {invitation.site.name}.",
        "note": f"it works once, until {date_format(localtime(invitation.expires_at), 'j M Y, H:i')}",
    }


@site_admin_required
def site_people(
    request, *, invite_form=None, token_form=None, new_link=None, new_token=None, status=200
):
    site = request.site
    members = list(
        Membership.objects.filter(site=site).select_related("user").order_by("user__username")
    )
    for m in members:
        m.form = RoleForm(initial={"role": m.role}, prefix=f"m{m.pk}")
    response = render(
        request,
        "clients/site_people.html",
        {
            "site": site,
            "members": members,
            "invitations": [
                i for i in Invitation.objects.filter(site=site).select_related("created_by")[:50]
            ],
            "tokens": ApiToken.objects.filter(site=site, kind=ApiToken.Kind.SITE).order_by(
                "-created_at"
            ),
            "invite_form": invite_form or InviteForm(),
            "token_form": token_form or TokenForm(),
            "new_link": new_link,
            "new_token": new_token,
            "invitation_days": settings.FEDHEALTH_INVITATION_DAYS,
        },
        status=status,
    )
    if new_link or new_token:
        add_never_cache_headers(response)  # the secret must not sit in a cache
    return response


@require_POST
@site_admin_required
def site_invite(request):
    form = InviteForm(request.POST)
    if not form.is_valid():
        return site_people(request, invite_form=form, status=400)
    invitation, raw = people.invite(
        request.site, form.cleaned_data["role"], by=request.user, note=form.cleaned_data["note"]
    )
    return site_people(request, new_link=shown_link(request, invitation, raw))


@require_POST
@site_admin_required
def invitation_revoke(request, pk: int):
    invitation = get_object_or_404(Invitation, pk=pk, site=request.site)
    if people.revoke_invitation(invitation, by=request.user):
        messages.success(request, "Invitation withdrawn: its link no longer works.")
    else:
        messages.error(request, "That invitation was already used or withdrawn.")
    return redirect("site_people")


@require_POST
@site_admin_required
def member_role(request, pk: int):
    membership = get_object_or_404(Membership, pk=pk, site=request.site)
    form = RoleForm(request.POST, prefix=f"m{pk}")
    if not form.is_valid():
        messages.error(request, "Choose site member or site admin.")
        return redirect("site_people")
    try:
        changed = people.change_role(membership, form.cleaned_data["role"], by=request.user)
    except people.PeopleChangeRefused as exc:
        messages.error(request, exc.message)
        return redirect("site_people")
    if changed:
        messages.success(
            request,
            f"{membership.user.get_username()} is now {dict(Invitation.Role.choices)[form.cleaned_data['role']].lower()}.",
        )
    if membership.user == request.user and form.cleaned_data["role"] != Membership.Role.SITE_ADMIN:
        return redirect("site_home")  # no longer an admin: this page is closed to them now
    return redirect("site_people")


@require_POST
@site_admin_required
def member_remove(request, pk: int):
    membership = get_object_or_404(
        Membership.objects.select_related("user"), pk=pk, site=request.site
    )
    try:
        people.remove_member(membership, by=request.user)
    except people.PeopleChangeRefused as exc:
        messages.error(request, exc.message)
        return redirect("site_people")
    if membership.user == request.user:
        return redirect("login")  # their own account is now deactivated
    messages.success(
        request,
        f"{membership.user.get_username()} was removed from {request.site.name} and can no longer sign in.",
    )
    return redirect("site_people")


@require_POST
@site_admin_required
def site_token_create(request):
    form = TokenForm(request.POST)
    if not form.is_valid():
        return site_people(request, token_form=form, status=400)
    token, raw = ApiToken.issue(
        site=request.site, name=form.cleaned_data["name"], created_by=request.user
    )
    return site_people(
        request,
        new_token={
            "raw": raw,
            "title": f"Site token {token.prefix} for {token.name}.",
            "note": "give it to your site agent (FEDHEALTH_AGENT_TOKEN); only its hash is kept",
        },
    )


@require_POST
@site_admin_required
def site_token_revoke(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, site=request.site, kind=ApiToken.Kind.SITE)
    if token.revoked_at is None:
        token.revoke()
        messages.success(
            request, f"Token {token.prefix} revoked: agents using it are refused from now on."
        )
    else:
        messages.error(request, f"Token {token.prefix} was already revoked.")
    return redirect("site_people")
