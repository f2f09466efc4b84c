"""Who may see what. Every view and API endpoint scopes its querysets through here.

Object permissions do not protect list views or creates (DRF's permissions guide), so
the rule is applied to the *queryset*: an object outside a user's scope is simply not
found (404), with no hint that it exists.

- A site member or site admin sees their own site's datasets, updates and evaluations,
  plus the global model of experiments their site takes part in.
- A coordinator (or superuser) sees every site's aggregate figures, experiments, rounds
  and model versions; never a row of data, and no dataset download.
"""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework.permissions import BasePermission

from .models import Dataset, Membership, Site


def membership(user) -> Membership | None:
    if not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.membership
    except Membership.DoesNotExist:
        return None


def is_coordinator(user) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_superuser:
        return True
    m = membership(user)
    return m is not None and m.role == Membership.Role.COORDINATOR


def site_of(user) -> Site | None:
    """The user's site, or None (coordinators, outsiders, inactive sites)."""
    m = membership(user)
    if m is None or m.site is None or not m.site.is_active:
        return None
    return m.site


def is_site_admin(user) -> bool:
    m = membership(user)
    return m is not None and m.role == Membership.Role.SITE_ADMIN and site_of(user) is not None


def visible_sites(user) -> QuerySet[Site]:
    if is_coordinator(user):
        return Site.objects.all()
    site = site_of(user)
    return Site.objects.filter(pk=site.pk) if site else Site.objects.none()


def visible_datasets(user) -> QuerySet[Dataset]:
    """Dataset *records* (summaries). Coordinators see every site's; members their own."""
    if is_coordinator(user):
        return Dataset.objects.select_related("site")
    site = site_of(user)
    return Dataset.objects.filter(site=site).select_related("site") if site else Dataset.objects.none()


def downloadable_datasets(user) -> QuerySet[Dataset]:
    """Only the owning site may download its file; coordinators never can."""
    site = site_of(user)
    return Dataset.objects.filter(site=site).exclude(file="") if site else Dataset.objects.none()


class IsCoordinator(BasePermission):
    message = "Only coordinators may do this."

    def has_permission(self, request, view) -> bool:
        return is_coordinator(request.user)


class IsSiteMember(BasePermission):
    message = "Only members of an active site may do this."

    def has_permission(self, request, view) -> bool:
        return site_of(request.user) is not None
