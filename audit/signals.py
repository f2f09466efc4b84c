"""Sign-ins and failed sign-ins, from Django's auth signals (every login door sends them)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from .services import Kind, record


@receiver(user_logged_in, dispatch_uid="audit_sign_in")
def _signed_in(sender, request, user, **kwargs) -> None:
    record(Kind.SIGN_IN, actor=user, request=request, target=f"user {user.pk}")


@receiver(user_login_failed, dispatch_uid="audit_sign_in_failed")
def _sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django masks the password in ``credentials``; only the name tried is kept. When it is a
    # member's name, the event is their site's, so its site admin sees attempts on it.
    from clients.models import Membership

    tried = str(credentials.get("username", ""))[:150]
    membership = Membership.objects.filter(user__username=tried).select_related("site").first() if tried else None
    record(Kind.SIGN_IN_FAILED, actor=tried or "(no name)", request=request, details={"username": tried},
           site=getattr(membership, "site", None))
