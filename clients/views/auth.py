"""Signing in and the landing page, which depends on who signed in."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.templatetags.static import static

from clients.permissions import is_coordinator, site_of


@login_required
def home(request):
    if is_coordinator(request.user):
        return redirect("dashboard")
    if site_of(request.user) is not None:
        return redirect("site_home")
    # Signed in but attached to no active site: say so rather than show empty pages.
    return render(request, "clients/no_access.html", status=403)


def locked_out(request, original_response=None, credentials=None):
    """django-axes' lockout response (settings.AXES_LOCKOUT_CALLABLE): a page saying
    what happened and for how long, with HTTP 429."""
    from axes.helpers import get_client_username, get_cool_off

    cool_off = get_cool_off(request)
    context = {
        "username": get_client_username(request, credentials) or "",
        "minutes": max(1, round(cool_off.total_seconds() / 60)) if cool_off else None,
    }
    return render(request, "registration/locked_out.html", context, status=429)


def favicon(request):
    """The logo, for browsers that ask for /favicon.ico whatever the page says."""
    return redirect(static("img/logo.svg"), permanent=True)
