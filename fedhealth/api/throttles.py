"""Rate limits per caller and scope (rates in settings: API_THROTTLE_* variables), and
the limit on failed token authentications per client address (API_AUTH_FAILURE_*).

DRF's ScopedRateThrottle counts in the Django cache, per process unless a shared
cache is configured; with several web workers the effective limit is a multiple.
"""

import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle


class ScopedThrottle(ScopedRateThrottle):
    """ScopedRateThrottle with a default scope, so no view is left unthrottled by mistake."""

    default_scope = "api"

    def allow_request(self, request, view):
        if not getattr(view, "throttle_scope", None):
            view.throttle_scope = self.default_scope
        return super().allow_request(request, view)


class FailedAuthLimit:
    """Failed token authentications counted per client address, in the Django cache.

    After ``FEDHEALTH_API_AUTH_FAILURES`` failures from one address within
    ``FEDHEALTH_API_AUTH_WINDOW_SECONDS`` (a fixed window from the first failure), that
    address gets 429 with Retry-After before any token is looked at, until the window
    ends. Only the address is counted, never the token or its owner, so guesses from one
    address cannot lock out the real holder elsewhere. A success does not reset the
    count: otherwise one valid token could interleave with guesses at others.
    The address comes from DRF's ``get_ident`` (REMOTE_ADDR, or X-Forwarded-For when
    REST_FRAMEWORK["NUM_PROXIES"] says how many proxies to trust).
    """

    def __init__(self, request) -> None:
        self.ident = BaseThrottle().get_ident(request)
        self.limit = settings.FEDHEALTH_API_AUTH_FAILURES
        self.window = settings.FEDHEALTH_API_AUTH_WINDOW_SECONDS
        self.count_key = f"api-auth-failures:{self.ident}"
        self.until_key = f"api-auth-failures-until:{self.ident}"

    def check(self) -> None:
        """Raise Throttled (429, Retry-After) while this address is over its limit."""
        if (cache.get(self.count_key) or 0) >= self.limit:
            until = cache.get(self.until_key) or time.time() + self.window
            raise exceptions.Throttled(
                wait=max(1, math.ceil(until - time.time())),
                detail="Too many failed authentications from this address.",
            )

    def record_failure(self) -> None:
        # add() only writes when the key is absent: the window starts at the first
        # failure and is not extended by later ones. incr() is atomic in Redis and
        # in LocMemCache.
        cache.add(self.until_key, time.time() + self.window, self.window)
        cache.add(self.count_key, 0, self.window)
        try:
            cache.incr(self.count_key)
        except ValueError:  # expired between add() and incr()
            cache.add(self.count_key, 1, self.window)
