"""The coordinator's pages for sites: create one (with its first site admin's
invitation), see a site's people and invite a site admin again."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import get_object_or_404, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from clients import people
from clients.models import Invitation, Membership
from clients.people_forms import SiteForm
from clients.permissions import visible_sites

from .access import coordinator_required
from .people import shown_link


@coordinator_required
def site_create(request):
    form = SiteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            site = people.create_site(
                name=data["name"],
                slug=data["slug"],
                mode=data["mode"],
                contact_name=data["contact_name"],
                contact_email=data["contact_email"],
                by=request.user,
            )
        except people.PeopleChangeRefused as exc:
            form.add_error(exc.field, exc.message)
        else:
            invitation, raw = people.invite(
                site, Invitation.Role.SITE_ADMIN, by=request.user, note=data["invite_note"]
            )
            return _site_page(
                request,
                site,
                new_link=shown_link(request, invitation, raw),
            )
    return render(
        request, "clients/site_form.html", {"form": form}, status=400 if form.errors else 200
    )


@coordinator_required
def site_detail(request, pk: int):
    return _site_page(request, get_object_or_404(visible_sites(request.user), pk=pk))


@require_POST
@coordinator_required
def site_invite_admin(request, pk: int):
    site = get_object_or_404(visible_sites(request.user), pk=pk)
    try:
        invitation, raw = people.invite(
            site, Invitation.Role.SITE_ADMIN, by=request.user, note=request.POST.get("note", "")
        )
    except people.PeopleChangeRefused as exc:
        return _site_page(request, site, error=exc.message, status=400)
    return _site_page(request, site, new_link=shown_link(request, invitation, raw))


def _site_page(request, site, *, new_link=None, error=None, status=200):
    response = render(
        request,
        "clients/site_detail.html",
        {
            "site": site,
            "members": Membership.objects.filter(site=site)
            .select_related("user")
            .order_by("role", "user__username"),
            "invitations": Invitation.objects.filter(site=site, role=Invitation.Role.SITE_ADMIN)[
                :20
            ],
            "new_link": new_link,
            "error": error,
            "invitation_days": settings.FEDHEALTH_INVITATION_DAYS,
        },
        status=status,
    )
    if new_link:
        add_never_cache_headers(response)  # the link's secret must not sit in a cache
    return response
