"""Keeps the current request in a context variable so ``audit.services.record`` knows who
and from where, whichever service it is called from (see audit/services.py)."""

from __future__ import annotations

from .services import current_request


class AuditContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            current_request.reset(token)
