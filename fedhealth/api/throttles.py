"""Rate limits per caller and scope (rates in settings: API_THROTTLE_* variables).

DRF's ScopedRateThrottle counts in the Django cache, per process unless a shared
cache is configured; with several web workers the effective limit is a multiple.
"""

from rest_framework.throttling import ScopedRateThrottle


class ScopedThrottle(ScopedRateThrottle):
    """ScopedRateThrottle with a default scope, so no view is left unthrottled by mistake."""

    default_scope = "api"

    def allow_request(self, request, view):
        if not getattr(view, "throttle_scope", None):
            view.throttle_scope = self.default_scope
        return super().allow_request(request, view)
