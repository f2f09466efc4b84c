"""Where an upload waits while its request is read: a private staging folder, never the
system temp folder.

Django keeps uploads up to FILE_UPLOAD_MAX_MEMORY_SIZE in memory and writes larger ones
to a temporary file. A dataset upload is patient rows, so that file lives under the
private storage root (``FEDHEALTH_UPLOAD_STAGING_DIR``, by default
``MEDIA_ROOT/staging/<site>/``), readable by the service's user only. It is deleted when
the request ends (moved into the site's storage when the upload is accepted); a process
killed mid-upload leaves it behind, and ``clean_staging`` (run at worker start and by
``manage.py clean_staging``) removes such leftovers.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, TemporaryFileUploadHandler

log = logging.getLogger(__name__)

SUFFIX = ".upload"
# Requests that do not say which site they are for (yet) stage here.
UNSORTED = "_incoming"


def staging_root() -> Path:
    configured = getattr(settings, "FEDHEALTH_UPLOAD_STAGING_DIR", "")
    return Path(configured) if configured else Path(settings.MEDIA_ROOT) / "staging"


def staging_dir(site_slug: str | None = None) -> Path:
    """The staging folder of one site (created, mode 0700)."""
    root = staging_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700, exist_ok=True)
    path = root / (site_slug or UNSORTED)
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class StagedUploadedFile(UploadedFile):
    """Django's TemporaryUploadedFile, in a staging folder: deleted when closed."""

    def __init__(
        self, name, content_type, size, charset, content_type_extra=None, *, directory: Path
    ):
        # NamedTemporaryFile creates the file 0600 and removes it when closed.
        file = tempfile.NamedTemporaryFile(suffix=SUFFIX, dir=directory)  # noqa: SIM115 (closed with the upload)
        super().__init__(file, name, content_type, size, charset, content_type_extra)

    def temporary_file_path(self) -> str:
        return self.file.name

    def close(self):
        try:
            return self.file.close()
        except FileNotFoundError:
            pass  # moved into the site's storage: nothing left to delete


class StagingUploadHandler(TemporaryFileUploadHandler):
    """TemporaryFileUploadHandler writing into the request's site staging folder
    (``request.site``, set by the upload views before the body is read)."""

    def new_file(self, *args, **kwargs):
        FileUploadHandler.new_file(self, *args, **kwargs)
        site = getattr(self.request, "site", None)
        self.file = StagedUploadedFile(
            self.file_name,
            self.content_type,
            0,
            self.charset,
            self.content_type_extra,
            directory=staging_dir(getattr(site, "slug", None)),
        )


def clean_staging(*, older_than: float | None = None) -> int:
    """Delete staged uploads last written more than ``older_than`` seconds ago
    (``FEDHEALTH_STAGING_MAX_AGE`` by default; 0 deletes all). Returns how many.

    The age guard spares uploads in flight in a web process that shares the folder.
    """
    root = staging_root()
    if not root.is_dir():
        return 0
    max_age = settings.FEDHEALTH_STAGING_MAX_AGE if older_than is None else older_than
    cutoff = time.time() - max_age
    removed = 0
    for path in root.rglob(f"*{SUFFIX}"):
        try:
            if path.is_file() and (max_age == 0 or path.stat().st_mtime < cutoff):
                os.remove(path)
                removed += 1
        except FileNotFoundError:
            continue  # its request ended meanwhile
    if removed:
        log.warning("removed %d stale staged upload(s)", removed)
    return removed
