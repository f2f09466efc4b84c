"""Small permission classes, composed per action with ``&`` and ``|``.

Scoping (who sees which object) is not here: every queryset goes through
``clients/permissions.py`` / ``aggregation/permissions.py``, so an object outside the
caller's scope is a 404. These classes only decide who may call an action at all.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from clients.models import Site
from clients.permissions import is_coordinator, site_of

from .authentication import site_token


class IsCoordinator(BasePermission):
    message = "Only coordinators may do this."

    def has_permission(self, request, view) -> bool:
        return is_coordinator(request.user)


class IsSiteMember(BasePermission):
    """A member of an active site, signed in or through the site's token."""

    message = "Only a member of an active site may do this."

    def has_permission(self, request, view) -> bool:
        return site_of(request.user) is not None


class IsSiteAgent(BasePermission):
    """A site token of an active site running in agent mode."""

    message = "Only a site token of an active agent-mode site may call the agent endpoints."

    def has_permission(self, request, view) -> bool:
        token = site_token(request)
        if token is None or not token.site.is_active:
            return False
        if token.site.mode != Site.Mode.AGENT:
            self.message = (
                f"site {token.site.slug} is hosted: its worker trains on the platform. "
                "Switch the site to agent mode to use the agent endpoints."
            )
            return False
        return True
