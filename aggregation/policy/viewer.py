"""Who is looking: the coordinator, a member or admin of one site, or a site's agent token."""

from __future__ import annotations

from dataclasses import dataclass

from clients.models import Membership, Site
from clients.permissions import is_coordinator, membership, site_of

COORDINATOR = "coordinator"
MEMBER = "member"
SITE_ADMIN = "site_admin"
AGENT = "agent"  # a site token, acting for its site
NOBODY = "nobody"


@dataclass(frozen=True)
class Viewer:
    role: str
    site: Site | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.role == COORDINATOR

    @property
    def site_id(self) -> int | None:
        return self.site.pk if self.site is not None else None

    @property
    def site_slug(self) -> str | None:
        return self.site.slug if self.site is not None else None

    def owns(self, site_id: int | None) -> bool:
        """Whether ``site_id`` is the viewer's own site (never true for a coordinator)."""
        return self.site is not None and site_id is not None and site_id == self.site.pk

    def sees_site(self, site_id: int | None) -> bool:
        """Whether the viewer may see a site-level fact (name, status, figures) of ``site_id``."""
        return self.is_coordinator or self.owns(site_id)


def viewer_of(user) -> Viewer:
    """The viewer behind a request's user: a User or an API site principal."""
    if is_coordinator(user):
        return Viewer(COORDINATOR)
    site = site_of(user)
    if site is None:
        return Viewer(NOBODY)
    m = membership(user)
    # A site token authenticates as a principal carrying an unsaved membership of its site.
    if m is not None and m.pk is None and getattr(user, "site", None) is not None:
        return Viewer(AGENT, site)
    if m is not None and m.role == Membership.Role.SITE_ADMIN:
        return Viewer(SITE_ADMIN, site)
    return Viewer(MEMBER, site)
