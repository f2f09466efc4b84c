"""Who may open a page, and uploads cut off at their size limit.

Object-level scoping is not done here: every view looks its objects up through the
``visible_*`` querysets (clients/permissions.py, aggregation/permissions.py), so an
object outside the user's scope is a 404. These decorators only gate whole pages by
role, and they run before any lookup, so a 403 never says whether an object exists.
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from clients.permissions import is_coordinator, site_of


def coordinator_required(view):
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not is_coordinator(request.user):
            raise PermissionDenied("This page is for coordinators.")
        return view(request, *args, **kwargs)

    return wrapped


def site_member_required(view):
    """The view gets the user's (active) site as ``request.site``."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        site = site_of(request.user)
        if site is None:
            raise PermissionDenied("This page is for members of a site.")
        request.site = site
        return view(request, *args, **kwargs)

    return wrapped


class SizeLimitedUploadHandler(FileUploadHandler):
    """Stops reading a request once any file in it passes ``limit`` bytes.

    The rest of the body is drained and discarded (``connection_reset=False``), so the
    browser gets a page explaining the limit rather than a reset connection, and
    nothing of the oversized file is kept on disk.
    """

    def __init__(self, request, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0
        request.upload_too_large = False

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) builds the file


def limit_upload_size(limit_setting: str):
    """Install ``SizeLimitedUploadHandler`` before the body is parsed.

    The CSRF middleware would parse the body (reading ``request.POST``) before the
    view could add a handler, so, as Django's upload-handler docs prescribe, the view
    is CSRF-exempt from the middleware and CSRF-protected here, after the handler is in.
    """

    def decorator(view):
        protected = csrf_protect(view)

        @csrf_exempt
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            request.upload_handlers.insert(0, SizeLimitedUploadHandler(request, getattr(settings, limit_setting)))
            return protected(request, *args, **kwargs)

        return wrapped

    return decorator
