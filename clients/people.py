"""Sites and their people without the Django admin: a coordinator creates a site and
invites its first site admin; a site admin invites members, changes roles and removes
people. The pages are clients/views/people.py; every change writes an audit event.

An invitation is a link holding a random secret (``secrets.token_urlsafe(32)``, ~256
bits); only its SHA-256 is stored, the link is shown once to whoever created it. It
works once (accepting is a conditional UPDATE on ``accepted_at IS NULL``), until
``FEDHEALTH_INVITATION_DAYS`` pass or someone revokes it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import services as audit

from .models import ApiToken, Invitation, Membership, Site


class PeopleChangeRefused(Exception):
    """A change this person may not make; nothing was changed. ``field`` names the input."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def create_site(
    *, name: str, slug: str, mode: str, contact_name: str = "", contact_email: str = "", by: Any
) -> Site:
    """Create a site (the form has checked each field; the database's unique indexes
    decide a race between two coordinators)."""
    with transaction.atomic():
        try:
            site = Site.objects.create(
                name=name,
                slug=slug,
                mode=mode,
                contact_name=contact_name,
                contact_email=contact_email,
            )
        except IntegrityError:
            raise PeopleChangeRefused(
                "slug", f"A site named {name!r} or with the short name {slug!r} exists."
            ) from None
        audit.record(
            audit.Kind.SITE_CREATE,
            actor=by,
            site=site,
            target=f"site {site.pk}",
            details={"name": site.name, "slug": site.slug, "mode": site.mode},
        )
    return site


def hash_secret(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def invite(site: Site, role: str, *, by: Any, note: str = "") -> tuple[Invitation, str]:
    """Create an invitation to ``site`` as ``role`` (member or site admin); returns the
    row and the secret for the link, which is not stored and so can be shown only now."""
    if role not in Invitation.Role.values:
        raise PeopleChangeRefused(
            "role", f"An invitation is for a site member or a site admin, not {role!r}."
        )
    if not site.is_active:
        raise PeopleChangeRefused(None, f"{site.name} is deactivated; nobody can be invited to it.")
    raw = secrets.token_urlsafe(32)
    expires = timezone.now() + timedelta(days=settings.FEDHEALTH_INVITATION_DAYS)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            site=site,
            role=role,
            note=note.strip()[:200],
            key_hash=hash_secret(raw),
            created_by=by,
            expires_at=expires,
        )
        audit.record(
            audit.Kind.INVITATION_CREATE,
            actor=by,
            site=site,
            target=f"invitation {invitation.pk}",
            details={"role": role, "expires_at": expires.isoformat()},
        )
    return invitation, raw


def find_invitation(raw: str) -> Invitation | None:
    """The invitation a link's secret belongs to (open or not), or None."""
    if not raw or len(raw) > 100:
        return None
    return Invitation.objects.select_related("site").filter(key_hash=hash_secret(raw)).first()


def why_closed(invitation: Invitation | None) -> str | None:
    """Why a link no longer works, in the product's words; None while it does."""
    if invitation is None:
        return "This invitation link is not valid. Check that you copied all of it."
    if invitation.accepted_at is not None:
        return "This invitation has already been used. Sign in with the account it created, or ask for a new one."
    if invitation.revoked_at is not None:
        return "This invitation was withdrawn. Ask your site admin or coordinator for a new one."
    if invitation.expires_at <= timezone.now():
        return "This invitation has expired. Ask your site admin or coordinator for a new one."
    if not invitation.site.is_active:
        return f"{invitation.site.name} is deactivated; its invitations no longer work."
    return None


def accept(raw: str, *, username: str, password: str) -> Any:
    """Create the invitee's account and membership; the invitation is spent in the same
    transaction, so a second use (or a race of two) finds it closed and makes nothing."""
    now = timezone.now()
    with transaction.atomic():
        invitation = find_invitation(raw)
        if (reason := why_closed(invitation)) is not None:
            raise PeopleChangeRefused(None, reason)
        User = get_user_model()
        if User.objects.filter(username__iexact=username).exists():
            raise PeopleChangeRefused(
                "username", f"The username {username!r} is taken; choose another."
            )
        spent = Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
        ).update(accepted_at=now)
        if not spent:
            raise PeopleChangeRefused(None, "This invitation has already been used.")
        try:
            with transaction.atomic():
                user = User.objects.create_user(username, password=password)
        except IntegrityError:
            raise PeopleChangeRefused(
                "username", f"The username {username!r} is taken; choose another."
            ) from None
        Membership.objects.create(user=user, site=invitation.site, role=invitation.role)
        Invitation.objects.filter(pk=invitation.pk).update(accepted_by=user)
        audit.record(
            audit.Kind.INVITATION_ACCEPT,
            actor=user,
            site=invitation.site,
            target=f"invitation {invitation.pk}",
            details={"role": invitation.role},
        )
    return user


def revoke_invitation(invitation: Invitation, *, by: Any) -> bool:
    """Withdraw an unused invitation; False when it was already used or withdrawn."""
    with transaction.atomic():
        done = Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        if done:
            audit.record(
                audit.Kind.INVITATION_REVOKE,
                actor=by,
                site=invitation.site,
                target=f"invitation {invitation.pk}",
                details={"role": invitation.role},
            )
    return bool(done)


def _locked_admins(site: Site) -> int:
    """Lock the site's row (every change of its people queues here, so two admins
    demoting each other cannot both succeed) and count its site admins."""
    Site.objects.select_for_update().get(pk=site.pk)
    return Membership.objects.filter(
        site=site, role=Membership.Role.SITE_ADMIN, user__is_active=True
    ).count()


def change_role(membership: Membership, role: str, *, by: Any) -> bool:
    """Make a site's member a site admin or back; never leaves the site without a site
    admin. False when the role was already ``role``."""
    if role not in Invitation.Role.values:
        raise PeopleChangeRefused(
            "role", f"A site's people are site members or site admins, not {role!r}."
        )
    with transaction.atomic():
        admins = _locked_admins(membership.site)
        current = Membership.objects.select_for_update().get(pk=membership.pk)
        if current.role == role:
            return False
        if current.role == Membership.Role.SITE_ADMIN and admins <= 1:
            raise PeopleChangeRefused(
                "role",
                f"{current.user.get_username()} is the site's last site admin: "
                "make someone else site admin first.",
            )
        previous = current.role
        Membership.objects.filter(pk=current.pk).update(role=role)
        audit.record(
            audit.Kind.MEMBER_ROLE,
            actor=by,
            site=current.site,
            target=f"user {current.user_id}",
            details={"username": current.user.get_username(), "from": previous, "to": role},
        )
    return True


def remove_member(membership: Membership, *, by: Any) -> None:
    """Take a person off the site: the membership goes, the account is deactivated (its
    sessions stop working; the row stays for the records that name it) and its personal
    API tokens are revoked. The last site admin cannot be removed."""
    with transaction.atomic():
        admins = _locked_admins(membership.site)
        current = (
            Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
        )
        if current.role == Membership.Role.SITE_ADMIN and admins <= 1:
            raise PeopleChangeRefused(
                None,
                f"{current.user.get_username()} is the site's last site admin and "
                "cannot be removed: make someone else site admin first.",
            )
        user = current.user
        for token in ApiToken.objects.filter(user=user, revoked_at__isnull=True):
            token.revoke()  # one audit event each
        current.delete()
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        audit.record(
            audit.Kind.MEMBER_REMOVE,
            actor=by,
            site=membership.site,
            target=f"user {user.pk}",
            details={"username": user.get_username(), "role": current.role},
        )
