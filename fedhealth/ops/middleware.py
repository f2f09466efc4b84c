"""A request id for every request (logs and the X-Request-ID header), and the request
metrics (fedhealth/ops/metrics.py). First in MIDDLEWARE, so it sees every answer."""

from __future__ import annotations

import re
import time
import uuid

from django.core.signals import request_finished
from django.dispatch import receiver

from .logs import current_request_id
from .metrics import REQUEST_SECONDS, REQUESTS

# A proxy's id is kept when it looks like one; anything else (or nothing) gets a new id,
# so a client cannot write arbitrary text into the logs.
_INCOMING = re.compile(r"[A-Za-z0-9._-]{8,64}")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _INCOMING.fullmatch(incoming) else uuid.uuid4().hex
        # Not reset when the chain returns: Django logs a 4xx/5xx after the middleware
        # (BaseHandler.get_response), and that line must carry the id too. It is
        # cleared when the request finishes (below).
        current_request_id.set(rid)
        started = time.perf_counter()
        response = self.get_response(request)
        response["X-Request-ID"] = rid
        method = request.method if request.method in _METHODS else "other"
        REQUESTS.labels(method, f"{response.status_code // 100}xx").inc()
        REQUEST_SECONDS.observe(time.perf_counter() - started)
        return response


@receiver(request_finished)
def _forget_request_id(**kwargs) -> None:
    current_request_id.set(None)
