"""Bearer-token authentication for personal tokens and site-agent tokens.

``Authorization: Bearer <token>`` (``Token <token>`` is accepted too). A personal
token authenticates as its user; a site token as a :class:`SitePrincipal`, which the
scoping helpers in ``clients/permissions.py`` treat exactly like a member of that site.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from clients.models import ApiToken, Membership, Site
from fedhealth.api.throttles import FailedAuthLimit

KEYWORDS = (b"bearer", b"token")
# last_used_at is advisory: writing it on every request would serialise all API
# traffic on one row per token (SQLite locks the whole database), so once a minute.
TOUCH_EVERY = timedelta(seconds=60)


class SitePrincipal:
    """The caller behind a site token: acts for one site, as a member of it."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_superuser = False
    is_staff = False

    def __init__(self, site: Site) -> None:
        self.site = site
        self.pk = f"site-{site.pk}"  # for throttling keys; never a user id
        self.username = f"site:{site.slug}"
        # An unsaved membership: what clients.permissions.site_of() reads.
        self.membership = Membership(site=site, role=Membership.Role.MEMBER)

    def __str__(self) -> str:
        return self.username


class TokenAuthentication(BaseAuthentication):
    """Look the token up by its visible prefix, then compare SHA-256 hashes."""

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in KEYWORDS:
            return None
        # An address past its failure limit is refused before the token is looked at.
        limit = FailedAuthLimit(request)
        limit.check()
        try:
            return self._authenticate(auth)
        except exceptions.AuthenticationFailed:
            limit.record_failure()
            raise

    def _authenticate(self, auth: list[bytes]):
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid token header: expected 'Bearer <token>'."
            )
        try:
            raw = auth[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        prefix = ApiToken.parse_prefix(raw)
        # The prefix is unique: a slice, not first(), whose ORDER BY cost more to build
        # than the query takes to run (every API request comes through here).
        found = (
            list(ApiToken.objects.select_related("user__membership__site", "site").filter(prefix=prefix)[:1])
            if prefix
            else []
        )
        token = found[0] if found else None
        if token is None or not token.matches(raw) or not token.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        if token.kind == ApiToken.Kind.SITE:
            principal = SitePrincipal(token.site)
        else:
            principal = token.user
            if not principal.is_active:
                raise exceptions.AuthenticationFailed("This token's user is inactive.")
        self._touch(token)
        return principal, token

    def authenticate_header(self, request) -> str:
        # Makes unauthenticated requests answer 401 (with this challenge), not 403.
        return 'Bearer realm="api"'

    @staticmethod
    def _touch(token: ApiToken) -> None:
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now


def site_token(request) -> ApiToken | None:
    """The site token the request authenticated with, if any."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) and auth.kind == ApiToken.Kind.SITE else None
